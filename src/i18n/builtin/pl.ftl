# Odpowiedzi na kliknięcia przycisków w czatach. Operator może zastąpić każdą
# z nich w locales/<lang>/*.ftl pod tym samym id.

switchboard-click-yours = Przypisano do Ciebie.
switchboard-click-taken-by = Już zajęte przez { $name }.
switchboard-click-taken = Już zajęte.
switchboard-click-not-allowed = Nie możesz tego wziąć.
switchboard-click-declined = Odrzucono.
switchboard-click-already-declined = Ta oferta została przez Ciebie odrzucona.
switchboard-click-expired = Ta oferta wygasła.
switchboard-click-inactive = Ten przycisk nie jest już aktywny.
switchboard-click-answered = Dziękujemy, Twoja odpowiedź została zapisana.
