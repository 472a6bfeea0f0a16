link-done-title = Готово
link-done = Спасибо, всё сделано.
link-expired-title = Ссылка устарела
link-expired = Срок действия этой ссылки истёк.
link-used-title = Уже использована
link-used = Эта ссылка уже была использована.
link-invalid-title = Ссылка не найдена
link-invalid = Эта ссылка недействительна.
link-confirm-title = Подтвердите
link-confirm = Нажмите кнопку, чтобы продолжить.
link-confirm-button = Подтвердить
link-preview = Эта ссылка выполняет действие, когда её открывают в браузере.
ui-title = Журнал Switchboard
ui-runs = Запуски
ui-scenarios = Сценарии
ui-events = События
ui-filter = Фильтр
ui-search = Поиск в данных события
ui-any = любой
ui-scenario = Сценарий
ui-status = Статус
ui-subject = Предмет
ui-created = Начат
ui-updated = Обновлён
ui-error = Ошибка
ui-run = Запуск { $id }
ui-step = Шаг
ui-why = Почему
ui-request = Запрос
ui-response = Ответ
ui-statuses = Доставка
ui-retry = Повторить
ui-retried = Повтор запрошен.
ui-cancel = Отменить
ui-no-runs = Нет подходящих запусков.
ui-started = начато
ui-done = готово
ui-failed = ошибки
ui-active = активно
ui-limited = ограничено
ui-last-fired = последний запуск
ui-enabled = включён
ui-disabled = выключен
ui-enable = Включить
ui-disable = Выключить
ui-event = Событие
ui-journal = Журнал
ui-graph = Путь по сценарию
ui-login = Войти
ui-token = Токен администратора
ui-bad-token = Неверный токен.
ui-older = Раньше
ui-never = никогда
ui-start = Запустить
ui-start-event = Событие (объект JSON или список)
ui-start-recent = Заполнить из недавнего события
ui-start-csv = или файл CSV (первая строка — имена полей)
ui-start-test = Тест (отмечается в журнале, meta.test в шаблонах)
ui-start-failed = Ничего не запущено
ui-started-title = Запущено
ui-run-col = Запуск
ui-not-started = не запущен
ui-test = тест
ui-broadcast = Рассылка
ui-broadcast-of = Рассылка: запусков, начатых этим запуском: { $n }
ui-broadcast-total = Получателей: { $n }
ui-messages = Сообщения
ui-replied = ответил
ui-newer = Новее
ui-graph-of = Граф сценария { $scenario }
ui-graph-period = Запуски за последние
ui-graph-days = { $n ->
    [one] { $n } день
    [few] { $n } дня
   *[other] { $n } дней
}
ui-graph-runs = { $n ->
    [one] { $n } запуск учтён на рёбрах
    [few] { $n } запуска учтены на рёбрах
   *[other] { $n } запусков учтено на рёбрах
}
ui-graph-link = граф
ui-config-refused = Папка конфигурации не перезагружена: в ней ошибки. Работает прежняя конфигурация.
ui-run-version = Версия
ui-run-version-current = текущая
ui-run-version-older = прежняя
