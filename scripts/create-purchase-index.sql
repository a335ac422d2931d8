-- unique_active_purchase, for operators who can only paste SQL into a console.
-- Prefer `kc-tasks migrate` or `kc-tasks ensure-index`, which do all of this and verify it.
--
-- Run each statement on its own, outside any transaction: CREATE/DROP INDEX CONCURRENTLY
-- refuse to run inside one (consoles that wrap a script in BEGIN/COMMIT: run them one by one).

-- 1. What is there now. No row: the index is missing. indisvalid = false: a failed
--    CREATE INDEX CONCURRENTLY left an INVALID index that stops no duplicate: run step 2.
SELECT c.relname, i.indisvalid, i.indisunique, pg_get_indexdef(i.indexrelid) AS definition
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE c.relname = 'unique_active_purchase';

-- 2. Only if step 1 showed an invalid or different index.
DROP INDEX CONCURRENTLY IF EXISTS unique_active_purchase;

-- 3. Keep the oldest active purchase of each student and course active; deactivate
--    (never delete) the others. Reports how many rows it changed.
WITH ranked AS (
    SELECT id, row_number() OVER (PARTITION BY student_id, course_id
                                  ORDER BY created_at NULLS LAST, id) AS n
    FROM student_course_purchases WHERE is_active
)
UPDATE student_course_purchases p SET is_active = false
FROM ranked r WHERE p.id = r.id AND r.n > 1;

-- 4. Build it without blocking writes. If this fails with a duplicate key error, a new
--    duplicate arrived meanwhile: run step 2, step 3 and this step again.
CREATE UNIQUE INDEX CONCURRENTLY unique_active_purchase
    ON student_course_purchases (student_id, course_id) WHERE is_active = true;

-- 5. Verify: one row, indisvalid = true. The WHERE clause of the ON CONFLICT target is
--    required; this EXPLAIN fails if PostgreSQL cannot use the index as the arbiter.
SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE c.relname = 'unique_active_purchase';
EXPLAIN INSERT INTO student_course_purchases (student_id, course_id) VALUES (NULL, NULL)
    ON CONFLICT (student_id, course_id) WHERE is_active = true DO NOTHING;
