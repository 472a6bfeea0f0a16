# Answers to button clicks in chats. An operator may override any of them
# in locales/<lang>/*.ftl under the same id.

switchboard-click-yours = It is yours.
switchboard-click-taken-by = Already taken by { $name }.
switchboard-click-taken = Already taken.
switchboard-click-not-allowed = You cannot take this.
switchboard-click-declined = Declined.
switchboard-click-already-declined = You declined this offer.
switchboard-click-expired = This offer has expired.
switchboard-click-inactive = This button is no longer active.
switchboard-click-answered = Thank you, your answer is recorded.
