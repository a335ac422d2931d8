-- docker compose's login roles, one per kind of process, each in its group role of
-- kc_tasks/migrations/roles.sql (run just before this, by the same db-roles service). psql only:
--   psql -v migrate_password=... -v web_password=... -v worker_password=... -f docker/logins.sql
-- The passwords come from docker/.env and are set again on every run: change one there and
-- `docker compose up` again. Idempotent.

SELECT format('CREATE ROLE %I LOGIN IN ROLE %I', login, grp)
  FROM (VALUES ('kc_migrate', 'kc_owner'), ('kc_web_app', 'kc_web'), ('kc_worker_app', 'kc_worker')) AS r(login, grp)
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r.login)
\gexec

ALTER ROLE kc_migrate PASSWORD :'migrate_password';
ALTER ROLE kc_web_app PASSWORD :'web_password';
ALTER ROLE kc_worker_app PASSWORD :'worker_password';

-- What `kc-tasks migrate` creates is kc_owner's, not its login's: another login can take over.
ALTER ROLE kc_migrate SET role = 'kc_owner';
