link-done-title = Gotowe
link-done = Dziękujemy, zrobione.
link-expired-title = Link wygasł
link-expired = Ten link wygasł.
link-used-title = Już użyty
link-used = Ten link został już użyty.
link-invalid-title = Nie znaleziono linku
link-invalid = Ten link jest nieprawidłowy.
link-confirm-title = Potwierdź
link-confirm = Naciśnij przycisk, aby kontynuować.
link-confirm-button = Potwierdź
link-preview = Ten link wykonuje akcję po otwarciu w przeglądarce.
ui-title = Dziennik Switchboard
ui-runs = Przebiegi
ui-scenarios = Scenariusze
ui-events = Zdarzenia
ui-filter = Filtruj
ui-search = Szukaj w danych zdarzenia
ui-any = dowolny
ui-scenario = Scenariusz
ui-status = Status
ui-subject = Przedmiot
ui-created = Start
ui-updated = Zmiana
ui-error = Błąd
ui-run = Przebieg { $id }
ui-step = Krok
ui-why = Dlaczego
ui-request = Żądanie
ui-response = Odpowiedź
ui-statuses = Doręczenie
ui-retry = Ponów
ui-retried = Ponowienie zlecone.
ui-cancel = Anuluj
ui-no-runs = Brak pasujących przebiegów.
ui-started = uruchomione
ui-done = zakończone
ui-failed = błędy
ui-active = aktywne
ui-limited = ograniczone
ui-last-fired = ostatnie uruchomienie
ui-enabled = włączony
ui-disabled = wyłączony
ui-enable = Włącz
ui-disable = Wyłącz
ui-event = Zdarzenie
ui-journal = Dziennik
ui-graph = Droga przez scenariusz
ui-login = Zaloguj
ui-token = Token administratora
ui-bad-token = Zły token.
ui-older = Starsze
ui-never = nigdy
ui-start = Uruchom
ui-start-event = Zdarzenie (obiekt JSON lub lista)
ui-start-recent = Wypełnij z ostatniego zdarzenia
ui-start-csv = lub plik CSV (pierwszy wiersz = nazwy pól)
ui-start-test = Test (oznaczony w dzienniku, meta.test w szablonach)
ui-start-failed = Nic nie uruchomiono
ui-started-title = Uruchomione przebiegi
ui-run-col = Przebieg
ui-not-started = nie uruchomiono
ui-test = test
ui-broadcast = Rozsyłka
ui-broadcast-of = Rozsyłka: { $n } przebiegów uruchomionych przez ten przebieg
ui-broadcast-total = Odbiorcy: { $n }
ui-messages = Wiadomości
ui-replied = odpowiedział
ui-newer = Nowsze
ui-graph-of = Graf scenariusza { $scenario }
ui-graph-period = Przebiegi z ostatnich
ui-graph-days = { $n ->
    [one] dnia
   *[other] { $n } dni
}
ui-graph-runs = { $n ->
    [one] jeden przebieg policzony na krawędziach
    [few] { $n } przebiegi policzone na krawędziach
   *[other] { $n } przebiegów policzonych na krawędziach
}
ui-graph-link = graf
ui-config-refused = Folder konfiguracji nie został przeładowany: zawiera błędy. Działa dotychczasowa konfiguracja.
ui-run-version = Wersja
ui-run-version-current = bieżąca
ui-run-version-older = wcześniejsza
