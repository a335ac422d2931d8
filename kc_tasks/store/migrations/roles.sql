-- The three database roles of kc_tasks (README, Security: database roles). Plain SQL, run by a
-- superuser on the kc_tasks database, once before the first `kc-tasks migrate` and again at
-- will: a second run changes nothing.
--
--   psql -v ON_ERROR_STOP=1 -d kc_tasks -f kc_tasks/migrations/roles.sql
--
--   kc_owner   owns the tables: `kc-tasks migrate` and `kc-tasks ensure-index` run as it
--   kc_web     the web process: stores webhooks in payment_events, reads purchases
--   kc_worker  the worker (beat's tasks run in it): writes purchases, revocations, events
--
-- None of them can log in: give each process a login role in its group, e.g.
--   CREATE ROLE kc_web_app LOGIN PASSWORD '...' IN ROLE kc_web;
-- and have the owner's login act as kc_owner, so that what migrate creates is kc_owner's:
--   CREATE ROLE kc_migrate LOGIN PASSWORD '...' IN ROLE kc_owner;
--   ALTER ROLE kc_migrate SET role = 'kc_owner';
-- docker/logins.sql does this for docker compose.
--
-- What kc_web and kc_worker may do to each table is granted by `kc-tasks migrate` after every
-- upgrade (kc_tasks/store/roles.py), so that a table a new migration adds is granted in the same run.

-- The group roles, if missing (a concurrent run may create one first: that is fine).
DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['kc_owner', 'kc_web', 'kc_worker'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$$;

-- kc_owner creates the tables; since PostgreSQL 15 only the database owner may create in
-- schema public unless granted.
GRANT USAGE, CREATE ON SCHEMA public TO kc_owner;
GRANT USAGE ON SCHEMA public TO kc_web, kc_worker;

-- kc_tasks' tables made by an earlier `kc-tasks migrate` as another user (postgres, say)
-- become kc_owner's, with their indexes. Only these: the database may hold other tables.
DO $$
DECLARE
    t regclass;
BEGIN
    FOR t IN
        SELECT c.oid::regclass FROM pg_class c
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
           AND c.relname IN ('student_course_purchases', 'duplicate_payments', 'event_outbox',
                             'revocations', 'payments', 'payment_events', 'restorations',
                             'pending_refunds', 'purged_dead_letters', 'alembic_version')
           AND c.relowner <> 'kc_owner'::regrole
    LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO kc_owner', t);
    END LOOP;
END
$$;
