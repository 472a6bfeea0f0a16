# Ответы на нажатия кнопок в чатах. Оператор может заменить любой из них
# в locales/<lang>/*.ftl под тем же id.

switchboard-click-yours = Закреплено за вами.
switchboard-click-taken-by = Уже занято: { $name }.
switchboard-click-taken = Уже занято.
switchboard-click-not-allowed = Вы не можете это взять.
switchboard-click-declined = Отклонено.
switchboard-click-already-declined = Вы отказались от этого предложения.
switchboard-click-expired = Срок этого предложения истёк.
switchboard-click-inactive = Эта кнопка больше не активна.
switchboard-click-answered = Спасибо, ваш ответ записан.
