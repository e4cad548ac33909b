"""Jobs: ingestion runs a user starts, pauses, resumes and cancels (DESIGN §6, seed 003).

``states`` is the status table and its errors, ``service`` runs queued jobs and settles their
status, ``kinds`` says what each kind of job runs; the store is an adapter
(``adapters/sqlite_jobs.py``) built by the composition root.
"""
