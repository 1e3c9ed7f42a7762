-- Every statement pgq runs at run time, in one place, named noun_verb so related
-- statements sort together. Loaded once by pgq/queries.py; executed only by
-- pgq/database.py. Parameters use psycopg's %(name)s style.
--
-- Time: a statement that needs "now" takes %(now)s and uses coalesce(%(now)s, now()),
-- so production uses the database clock (now = NULL) and tests inject a fixed time.

-- name: clock_now_and_ids
-- One round trip before a bulk COPY: the database's "now" (so state and run_at are
-- decided by the database clock, not the client's) and n fresh job ids, because COPY
-- cannot return the ids it assigned.
-- The sequence is named as a constant: nextval() of a regclass computed in the query
-- costs about 5 µs a call on PostgreSQL 15, of a constant under 1 µs. Migration 0001
-- names it; tests/integration/test_migrations.py checks the name.
SELECT coalesce(%(now)s::timestamptz, now()) AS now,
       array(SELECT nextval('pgq_jobs_id_seq'::regclass)
             FROM generate_series(1, %(n)s)) AS ids;

-- name: job_insert
-- One job. ON CONFLICT targets the partial unique index: a key already held makes this
-- return no row, and the caller looks for the holder (job_unique_holder_release). A
-- concurrent, uncommitted holder makes this statement wait for that transaction: if it
-- commits we conflict, if it rolls back we insert. That wait is what makes the key safe
-- under concurrent transactions without any lock of our own. With %(notify)s the
-- PostgreSQL wake-up (see queue_notify) is sent by the same statement, saving the round
-- trip a separate NOTIFY would cost; a duplicate inserts no row and wakes no one.
INSERT INTO pgq_jobs AS j (
    queue, task, state, priority, max_attempts, args, run_at, created_at,
    timeout_seconds, unique_key, unique_until, unique_held, tags, meta)
SELECT %(queue)s, %(task)s,
       CASE WHEN t.run_at > t.now THEN 'scheduled' ELSE 'available' END,
       %(priority)s, %(max_attempts)s, %(args)s::jsonb, t.run_at, t.now,
       %(timeout_seconds)s, %(unique_key)s, t.now + %(unique_for)s::interval,
       %(unique_key)s::text IS NOT NULL, %(tags)s::text[], %(meta)s::jsonb
FROM (SELECT n.now,
             coalesce(%(run_at)s::timestamptz, n.now + %(delay)s::interval) AS run_at
      FROM (SELECT coalesce(%(now)s::timestamptz, now()) AS now) AS n) AS t
ON CONFLICT (task, unique_key) WHERE unique_held DO NOTHING
RETURNING j.id, CASE WHEN %(notify)s THEN pg_notify('pgq_wakeup', j.queue) END;

-- name: job_unique_holder_release
-- After job_insert conflicted: find the row holding (task, unique_key) and, if its hold
-- has lapsed, release it in the same statement. A hold lapses when the job failed or was
-- cancelled, or completed with no window or after its window (unique_until). Returns
-- no row if the holder vanished meanwhile (its transaction rolled back, or it was
-- pruned), and lapsed = true if its hold no longer counts; either way the caller inserts
-- again, and only a holder returned with lapsed = false is a duplicate's answer.
-- "Lapsed" is judged on the row as this statement's snapshot saw it, or as the UPDATE
-- found its latest version, not by whether this statement did the release: when several
-- enqueues find the same ended holder at once, one releases it and the others' UPDATE
-- waits for it and then matches nothing (the row's latest version is no longer held).
-- Taking that as "the hold still counts" told them the ended job was theirs (issue 12,
-- defect 8). A wrong "lapsed" costs at most one more insert, which conflicts with
-- whatever holds the key then and asks again. The UPDATE re-checks its conditions on the
-- row's latest version, so two releasers cannot both release it, and no row lock is
-- taken on an active holder.
WITH holder AS (
    SELECT id,
           (state IN ('failed', 'cancelled')
            OR (state = 'completed'
                AND (unique_until IS NULL
                     OR unique_until <= coalesce(%(now)s::timestamptz, now())))) AS lapsed
    FROM pgq_jobs
    WHERE task = %(task)s AND unique_key = %(unique_key)s AND unique_held
), released AS (
    UPDATE pgq_jobs AS j SET unique_held = false
    FROM holder AS h
    WHERE j.id = h.id AND j.unique_held
      AND (j.state IN ('failed', 'cancelled')
           OR (j.state = 'completed'
               AND (j.unique_until IS NULL
                    OR j.unique_until <= coalesce(%(now)s::timestamptz, now()))))
    RETURNING j.id
)
SELECT h.id, h.lapsed OR EXISTS (SELECT 1 FROM released) AS lapsed FROM holder AS h;

-- name: job_unique_release_lapsed_many
-- Bulk enqueue, before inserting: release every lapsed hold on the batch's keys, so the
-- insert below conflicts only with holds that still count.
UPDATE pgq_jobs AS j SET unique_held = false
FROM unnest(%(tasks)s::text[], %(unique_keys)s::text[]) AS k(task, unique_key)
WHERE j.task = k.task AND j.unique_key = k.unique_key AND j.unique_held
  AND (j.state IN ('failed', 'cancelled')
       OR (j.state = 'completed'
           AND (j.unique_until IS NULL
                OR j.unique_until <= coalesce(%(now)s::timestamptz, now()))));

-- name: job_insert_unique_many
-- Bulk enqueue of jobs that carry unique keys: one statement for the batch. Rows whose
-- key is held (by an existing job or an earlier row of the same batch) are skipped by
-- ON CONFLICT; RETURNING names the inserted rows by (task, unique_key), which is unique
-- among them, so the caller can map ids back to its input.
INSERT INTO pgq_jobs AS j (
    queue, task, state, priority, max_attempts, args, run_at, created_at,
    timeout_seconds, unique_key, unique_until, unique_held, tags, meta)
SELECT r.queue, r.task,
       CASE WHEN t.run_at > n.now THEN 'scheduled' ELSE 'available' END,
       r.priority, r.max_attempts, r.args::jsonb, t.run_at, n.now,
       r.timeout_seconds, r.unique_key, n.now + r.unique_for, true,
       ARRAY(SELECT jsonb_array_elements_text(r.tags::jsonb)), r.meta::jsonb
FROM (SELECT coalesce(%(now)s::timestamptz, now()) AS now) AS n,
     unnest(%(queue)s::text[], %(task)s::text[], %(priority)s::smallint[],
            %(max_attempts)s::int[], %(args)s::text[], %(run_at)s::timestamptz[],
            %(delay)s::interval[], %(timeout_seconds)s::float8[], %(unique_key)s::text[],
            %(unique_for)s::interval[], %(tags)s::text[], %(meta)s::text[], %(ord)s::int[])
       AS r(queue, task, priority, max_attempts, args, run_at, delay, timeout_seconds,
            unique_key, unique_for, tags, meta, ord),
     LATERAL (SELECT coalesce(r.run_at, n.now + r.delay) AS run_at) AS t
ORDER BY r.ord
ON CONFLICT (task, unique_key) WHERE unique_held DO NOTHING
RETURNING j.id, j.task, j.unique_key;

-- name: job_unique_holders_many
-- Bulk enqueue, after job_insert_unique_many skipped rows: who holds each of those keys.
-- Only holds that still count are returned; a key whose holder rolled back or lapsed
-- since job_unique_release_lapsed_many ran is retried one by one by the caller.
SELECT j.task, j.unique_key, j.id
FROM unnest(%(tasks)s::text[], %(unique_keys)s::text[]) AS k(task, unique_key)
JOIN pgq_jobs AS j
  ON j.task = k.task AND j.unique_key = k.unique_key AND j.unique_held
WHERE j.state IN ('scheduled', 'available', 'running', 'retryable')
   OR (j.state = 'completed'
       AND j.unique_until > coalesce(%(now)s::timestamptz, now()));

-- name: job_copy
-- Bulk enqueue of jobs without unique keys: COPY is the fastest way in. Ids, state and
-- run_at come from clock_now_and_ids, so the database clock still decides them.
COPY pgq_jobs (id, queue, task, state, priority, max_attempts, args, run_at, created_at,
               timeout_seconds, tags, meta)
FROM STDIN;

-- name: job_copy_now
-- job_copy for a batch whose every job is due now, untagged and without meta (the usual
-- bulk enqueue): state, run_at, created_at, tags and meta are left to the table's
-- defaults ('available', now(), '{}'), which the server fills without parsing two
-- timestamps, an array and a JSON object per row (about a quarter of the COPY's server
-- time). now() is the transaction's start, the same instant clock_now_and_ids returned.
COPY pgq_jobs (id, queue, task, priority, max_attempts, args, timeout_seconds)
FROM STDIN;

-- name: job_claim
-- Claim up to n jobs from each queue for one worker, in one statement. Each queue's pick
-- is a LATERAL sub-select that walks pgq_jobs_claim_idx in (priority, run_at, id) order
-- and locks with SKIP LOCKED, so concurrent workers take disjoint rows without waiting.
-- LIMIT sits inside the locking sub-select and the CTE is MATERIALIZED: the planner can
-- neither lock more rows than it returns nor re-run the pick for the UPDATE. The UPDATE
-- finds the picked rows by primary key through id = ANY(ARRAY(...)): joined to the CTE,
-- the planner guessed it returns a tenth of the table and, once the table had statistics,
-- hashed a sequential scan of all of it for every claim (27 ms at 50,000 rows). Scheduled
-- and retryable jobs are claimed directly once due: no promotion step is needed for a
-- job to run on time. Tasks this worker does not know are left for a worker that does.
--
-- Each queue's walk may start at a position (priority, run_at, id) instead of the index's
-- beginning: the start_* arrays, one element per queue, NULL (or the whole array NULL)
-- for the beginning. Claimed jobs leave dead entries at the head of the index that an
-- open snapshot keeps there, and a walk from the beginning visits every one of them;
-- pgq.claim_cursor says where a queue's claimable jobs start and when to walk it all
-- again (issue 12, defect 2). The start is a row comparison on the index's own columns,
-- so the scan begins there rather than filtering. RETURNING ends with each job's
-- priority and run_at, which pgq.claim_cursor keeps. A paused queue (pgq_queues) is
-- dropped from the wanted list: one primary-key probe of a tiny table per queue.
-- The last column is the enqueue's trace context (pgq.client.tracing): only that key of
-- meta, NULL for a job enqueued without tracing, so an untraced claim carries no meta.
WITH wanted AS (
    SELECT w.queue, w.n, w.priority, w.run_at, w.id
    FROM unnest(%(queues)s::text[], %(limits)s::int[], %(start_priorities)s::smallint[],
                %(start_run_ats)s::timestamptz[], %(start_ids)s::bigint[])
         AS w(queue, n, priority, run_at, id)
    WHERE w.n > 0
      AND NOT EXISTS (SELECT 1 FROM pgq_queues AS p WHERE p.name = w.queue AND p.paused)
), picked AS MATERIALIZED (
    SELECT c.id
    FROM wanted AS w
    CROSS JOIN LATERAL (
        SELECT id FROM pgq_jobs
        WHERE queue = w.queue
          AND (priority, run_at, id) >= (coalesce(w.priority, -32768),
                                         coalesce(w.run_at, '-infinity'),
                                         coalesce(w.id, 0))
          AND state IN ('available', 'retryable', 'scheduled')
          AND run_at <= coalesce(%(now)s::timestamptz, now())
          AND task = ANY(%(tasks)s::text[])
          AND NOT isolated
        ORDER BY priority, run_at, id
        LIMIT w.n
        FOR UPDATE SKIP LOCKED
    ) AS c
)
UPDATE pgq_jobs AS j
SET state = 'running',
    attempt = j.attempt + 1,
    started_at = coalesce(%(now)s::timestamptz, now()),
    lease_owner = %(worker)s,
    lease_expires_at = coalesce(%(now)s::timestamptz, now())
                       + make_interval(secs => %(lease_seconds)s)
WHERE j.id = ANY (ARRAY(SELECT id FROM picked))
RETURNING j.id, j.queue, j.task, j.args, j.attempt, j.max_attempts, j.timeout_seconds,
          j.lease_expires_at,
          (SELECT count(*) FROM jsonb_array_elements(j.errors) AS e
           WHERE e->>'type' = 'pgq.WorkerLost'
             AND (e->>'charged') IS DISTINCT FROM 'false')::int AS lost,
          j.priority, j.run_at, j.meta->'_pgq_trace' AS trace;

-- name: job_isolated_due
-- Does a job that must run alone wait in these queues? pgq_jobs_isolated_idx is nearly
-- always empty, so this is one index page; the producer asks it on its reclaim cadence.
-- Paused queues are skipped, as in job_claim.
SELECT EXISTS (
    SELECT 1 FROM pgq_jobs
    WHERE isolated AND queue = ANY(%(queues)s::text[])
      AND state IN ('available', 'retryable', 'scheduled')
      AND run_at <= coalesce(%(now)s::timestamptz, now())
      AND task = ANY(%(tasks)s::text[])
      AND NOT EXISTS (SELECT 1 FROM pgq_queues AS p
                      WHERE p.name = pgq_jobs.queue AND p.paused));

-- name: job_claim_isolated
-- Claim one job that must run alone (a suspect of a worker crash, see pgq.reclaim), for a
-- worker process that runs nothing else until it ends. Same lease and RETURNING as
-- job_claim; found through pgq_jobs_isolated_idx. Paused queues are skipped, as in job_claim.
-- Its last column is job_claim's last too: the enqueue's trace context.
WITH picked AS MATERIALIZED (
    SELECT id FROM pgq_jobs
    WHERE isolated AND queue = ANY(%(queues)s::text[])
      AND state IN ('available', 'retryable', 'scheduled')
      AND run_at <= coalesce(%(now)s::timestamptz, now())
      AND task = ANY(%(tasks)s::text[])
      AND NOT EXISTS (SELECT 1 FROM pgq_queues AS p
                      WHERE p.name = pgq_jobs.queue AND p.paused)
    ORDER BY priority, run_at, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
UPDATE pgq_jobs AS j
SET state = 'running',
    attempt = j.attempt + 1,
    started_at = coalesce(%(now)s::timestamptz, now()),
    lease_owner = %(worker)s,
    lease_expires_at = coalesce(%(now)s::timestamptz, now())
                       + make_interval(secs => %(lease_seconds)s)
WHERE j.id = ANY (ARRAY(SELECT id FROM picked))
RETURNING j.id, j.queue, j.task, j.args, j.attempt, j.max_attempts, j.timeout_seconds,
          j.lease_expires_at,
          (SELECT count(*) FROM jsonb_array_elements(j.errors) AS e
           WHERE e->>'type' = 'pgq.WorkerLost'
             AND (e->>'charged') IS DISTINCT FROM 'false')::int AS lost,
          j.meta->'_pgq_trace' AS trace;

-- name: job_isolate_many
-- Reclaim: these jobs run alone from now on (suspects of a crash, or its proven cause).
UPDATE pgq_jobs SET isolated = true WHERE id = ANY(%(ids)s::bigint[]);

-- name: job_lease_extend_many
-- The supervisor renews the leases of its children's jobs from the table they share with
-- it (pgq.leasetable), so a child whose task holds the GIL cannot lose them. Fenced like
-- every write: (id, attempt, owner, running); a stale entry renews nothing. Reached by
-- primary key, in id order, as job_finish_many explains.
UPDATE pgq_jobs AS j
SET lease_expires_at = coalesce(%(now)s::timestamptz, now())
                       + make_interval(secs => %(lease_seconds)s)
FROM (SELECT * FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(owners)s::text[])
                    AS u(id, attempt, owner)
      ORDER BY u.id) AS p
WHERE j.id = p.id AND j.attempt = p.attempt AND j.lease_owner = p.owner
  AND j.state = 'running' COLLATE "C"
RETURNING j.id;

-- name: job_heartbeat_many
-- One statement per worker process per interval: extend every lease it still holds and
-- flush the progress its tasks reported. Fenced on (id, attempt, owner, running): a job
-- missing from RETURNING was lost (reclaimed, cancelled) and its task must stop. Reached
-- by primary key, in id order, as job_finish_many explains.
UPDATE pgq_jobs AS j
SET lease_expires_at = coalesce(%(now)s::timestamptz, now())
                       + make_interval(secs => %(lease_seconds)s),
    progress = coalesce(p.progress::jsonb, j.progress)
FROM (SELECT * FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(progress)s::text[])
                    AS u(id, attempt, progress)
      ORDER BY u.id) AS p
WHERE j.id = p.id AND j.attempt = p.attempt AND j.lease_owner = %(worker)s
  AND j.state = 'running' COLLATE "C"
RETURNING j.id, j.lease_expires_at;

-- name: job_finish_many
-- Record a batch of attempt outcomes in one statement: completed, retryable, failed,
-- cancelled, snoozed (scheduled, attempt refunded) or released at shutdown (available,
-- attempt refunded). Every row is fenced on (id, attempt, lease owner, running), so a
-- worker that lost its lease writes nothing; RETURNING tells it which rows it still owned.
--
-- The rows are reached by primary key, whatever the planner's statistics say. The
-- running-jobs index (partial: state = 'running') leads to them too, and on an analyzed
-- table the planner preferred it (by lease owner, or a scan of the whole index it took
-- for small). But while any session holds a snapshot open (a long report, a pg_dump),
-- every job a worker ever finished leaves a dead entry in that index that nothing can
-- remove yet, and each flush walked all of them: 88 million index tuples read per drain
-- of 50,000 jobs instead of 130 thousand (issue 12, defect 2). So the state is compared
-- under COLLATE "C": the same test for this word, but no longer the index's predicate,
-- which the planner then cannot prove, so that index is no way to the rows
-- (tests/integration/test_query_plans.py checks the plans, custom and generic). The
-- outcomes are taken in id order, as in every fenced write: they all lock their rows in
-- the same order, so a flush and a lease renewal cannot deadlock.
UPDATE pgq_jobs AS j
SET state = o.state,
    attempt = j.attempt - o.refund,
    run_at = CASE WHEN o.state IN ('completed', 'failed', 'cancelled') THEN j.run_at
                  ELSE coalesce(%(now)s::timestamptz, now()) + make_interval(secs => o.delay) END,
    finished_at = CASE WHEN o.state IN ('completed', 'failed', 'cancelled')
                       THEN coalesce(%(now)s::timestamptz, now()) END,
    result = CASE WHEN o.state = 'completed' THEN o.result::jsonb ELSE j.result END,
    errors = CASE WHEN o.error IS NULL THEN j.errors
                  ELSE j.errors || jsonb_build_array(o.error::jsonb
                       || jsonb_build_object('at', coalesce(%(now)s::timestamptz, now()))) END
FROM (SELECT * FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(owners)s::text[],
                           %(states)s::text[], %(delays)s::float8[], %(refunds)s::int[],
                           %(results)s::text[], %(errors)s::text[])
                    AS u(id, attempt, owner, state, delay, refund, result, error)
      ORDER BY u.id) AS o
WHERE j.id = o.id AND j.attempt = o.attempt AND j.lease_owner = o.owner
  AND j.state = 'running' COLLATE "C"
RETURNING j.id,
          -- A job someone waits for (app.jobs.result set notify_done) says it finished;
          -- the others pay one boolean test, no pg_notify (migration 0009).
          CASE WHEN j.notify_done AND j.state IN ('completed', 'failed', 'cancelled')
               THEN pg_notify('pgq_done', j.id::text)::text END;


-- name: job_finish_and_claim
-- One statement, one commit: store a batch of outcomes (job_finish_many, verbatim) and
-- claim the next batch (job_claim, verbatim). A worker process whose outcomes are waiting
-- when it claims sends them with the claim, so a cycle of quick jobs costs one statement
-- and one commit instead of two of each (issue 12: the claim and the flush of 10 no-op
-- jobs were two statements and two commits per 10 jobs, where the SQL alone with one
-- commit runs 1.1-1.5x faster). The two UPDATEs touch disjoint rows: both CTEs see the
-- statement's snapshot, where the finished jobs are still running and so never picked.
-- The rows back: the ids of the finished jobs still owned (finished = true, the rest
-- NULL), then the claimed jobs as job_claim returns them (finished = false).
-- tests/unit/test_queries.py checks that the two parts stay job_finish_many and
-- job_claim word for word.
WITH wanted AS (
    SELECT w.queue, w.n, w.priority, w.run_at, w.id
    FROM unnest(%(queues)s::text[], %(limits)s::int[], %(start_priorities)s::smallint[],
                %(start_run_ats)s::timestamptz[], %(start_ids)s::bigint[])
         AS w(queue, n, priority, run_at, id)
    WHERE w.n > 0
      AND NOT EXISTS (SELECT 1 FROM pgq_queues AS p WHERE p.name = w.queue AND p.paused)
), picked AS MATERIALIZED (
    SELECT c.id
    FROM wanted AS w
    CROSS JOIN LATERAL (
        SELECT id FROM pgq_jobs
        WHERE queue = w.queue
          AND (priority, run_at, id) >= (coalesce(w.priority, -32768),
                                         coalesce(w.run_at, '-infinity'),
                                         coalesce(w.id, 0))
          AND state IN ('available', 'retryable', 'scheduled')
          AND run_at <= coalesce(%(now)s::timestamptz, now())
          AND task = ANY(%(tasks)s::text[])
          AND NOT isolated
        ORDER BY priority, run_at, id
        LIMIT w.n
        FOR UPDATE SKIP LOCKED
    ) AS c
),
finished AS (
    UPDATE pgq_jobs AS j
    SET state = o.state,
        attempt = j.attempt - o.refund,
        run_at = CASE WHEN o.state IN ('completed', 'failed', 'cancelled') THEN j.run_at
                      ELSE coalesce(%(now)s::timestamptz, now()) + make_interval(secs => o.delay) END,
        finished_at = CASE WHEN o.state IN ('completed', 'failed', 'cancelled')
                           THEN coalesce(%(now)s::timestamptz, now()) END,
        result = CASE WHEN o.state = 'completed' THEN o.result::jsonb ELSE j.result END,
        errors = CASE WHEN o.error IS NULL THEN j.errors
                      ELSE j.errors || jsonb_build_array(o.error::jsonb
                           || jsonb_build_object('at', coalesce(%(now)s::timestamptz, now()))) END
    FROM (SELECT * FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(owners)s::text[],
                               %(states)s::text[], %(delays)s::float8[], %(refunds)s::int[],
                               %(results)s::text[], %(errors)s::text[])
                        AS u(id, attempt, owner, state, delay, refund, result, error)
          ORDER BY u.id) AS o
    WHERE j.id = o.id AND j.attempt = o.attempt AND j.lease_owner = o.owner
      AND j.state = 'running' COLLATE "C"
    RETURNING j.id,
              -- A job someone waits for (app.jobs.result set notify_done) says it finished;
              -- the others pay one boolean test, no pg_notify (migration 0009).
              CASE WHEN j.notify_done AND j.state IN ('completed', 'failed', 'cancelled')
                   THEN pg_notify('pgq_done', j.id::text)::text END
),
claimed AS (
    UPDATE pgq_jobs AS j
    SET state = 'running',
        attempt = j.attempt + 1,
        started_at = coalesce(%(now)s::timestamptz, now()),
        lease_owner = %(worker)s,
        lease_expires_at = coalesce(%(now)s::timestamptz, now())
                           + make_interval(secs => %(lease_seconds)s)
    WHERE j.id = ANY (ARRAY(SELECT id FROM picked))
    RETURNING j.id, j.queue, j.task, j.args, j.attempt, j.max_attempts, j.timeout_seconds,
              j.lease_expires_at,
              (SELECT count(*) FROM jsonb_array_elements(j.errors) AS e
               WHERE e->>'type' = 'pgq.WorkerLost'
                 AND (e->>'charged') IS DISTINCT FROM 'false')::int AS lost,
              j.priority, j.run_at, j.meta->'_pgq_trace' AS trace
)
SELECT true AS finished, f.id, NULL::text, NULL::text, NULL::jsonb, NULL::int, NULL::int,
       NULL::float8, NULL::timestamptz, NULL::int, NULL::smallint, NULL::timestamptz,
       NULL::jsonb AS trace
FROM finished AS f
UNION ALL
SELECT false, c.id, c.queue, c.task, c.args, c.attempt, c.max_attempts, c.timeout_seconds,
       c.lease_expires_at, c.lost, c.priority, c.run_at, c.trace
FROM claimed AS c;

-- name: job_lost_lock
-- Running jobs whose lease expired (their worker died, hung, or was partitioned away),
-- or whose owner is known dead (a supervisor saw its child exit). Locked with SKIP
-- LOCKED so concurrent reclaimers share the work; the caller decides retry or failure
-- per task policy and writes it with job_finish_many in the same transaction.
SELECT id, attempt, lease_owner, task, max_attempts,
       -- Charged losses only: a suspect or a bystander of another job's crash is not
       -- blamed (pgq.reclaim), so it does not spend the crash budget.
       (SELECT count(*) FROM jsonb_array_elements(errors) AS e
        WHERE e->>'type' = 'pgq.WorkerLost'
          AND (e->>'charged') IS DISTINCT FROM 'false')::int AS lost,
       queue  -- for the log line and the dead-letter hooks
FROM pgq_jobs
WHERE state = 'running'
  AND (lease_expires_at < coalesce(%(now)s::timestamptz, now())
       OR lease_owner = ANY(%(dead_owners)s::text[]))
ORDER BY id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- name: job_unknown_tasks
-- Due jobs in this worker's queues whose task it does not know (a rolling deploy, a
-- typo in a producer): reported in the log, never claimed, never failed.
SELECT queue, task, count(*)::int
FROM pgq_jobs
WHERE queue = ANY(%(queues)s::text[])
  AND state IN ('available', 'retryable', 'scheduled')
  AND run_at <= now()
  AND NOT (task = ANY(%(tasks)s::text[]))
GROUP BY queue, task
ORDER BY 3 DESC
LIMIT 20;

-- name: job_count_active
-- Jobs of these queues and tasks that may still run (any active state, due or not). Used
-- by Worker.run_async(until_idle=True) in demos and tests, not on the hot path.
SELECT count(*)
FROM pgq_jobs
WHERE queue = ANY(%(queues)s::text[]) AND task = ANY(%(tasks)s::text[])
  AND state IN ('available', 'retryable', 'scheduled', 'running');

-- name: job_get
-- One job, every column (pgq.client.jobfilter.JobRecord, in this order).
SELECT id, queue, task, state, priority, attempt, max_attempts, args, run_at, created_at,
       started_at, finished_at, lease_owner, lease_expires_at, timeout_seconds, unique_key,
       unique_until, unique_held, tags, meta, errors, result, progress, isolated,
       notify_done
FROM pgq_jobs
WHERE id = %(id)s;

-- name: job_list
-- One page of jobs, newest first, by keyset on the primary key (id < before): no
-- OFFSET, so a page costs the same at any depth and rows inserted meanwhile (larger ids)
-- never shift the pages that follow.
-- A first page must not read the table when its filter matches few jobs (10,000,000
-- rows: bench/README.md, "web_reads: 10M rows"): with the values sent, the planner
-- folds away the NULL tests and picks, per filter, the newest-first walk of the primary
-- key (many matches) or an index on the filter, then sorts what it found (few): task
-- (task, created_at), failed/cancelled by task (task, id), unique_key, waiting and
-- finished states (the claim and finished indexes), tag and meta (GIN), queue (below).
-- The new indexes (migration 0011) are partial so that the hot path pays little for
-- them: the GIN ones hold only jobs that have tags or meta, and the "<> empty" conjuncts
-- below, implied by the tag and meta filters, let the planner prove their predicates.
-- The queue: an index of every job by (queue, id) would take an entry at the insert,
-- the claim and the finish of every job (+3 WAL records a job, a sixth more WAL); the
-- finished jobs' (queue, id) index takes one, at the finish, and the always-true state
-- conjunct below splits the table into finished, waiting and running, so the planner
-- can read a queue's jobs as a BitmapOr of that index, the claim index (queue leading)
-- and the running jobs' index (a worker fleet's running jobs, bounded by concurrency).
SELECT id, queue, task, state, priority, attempt, max_attempts, args, run_at, created_at,
       started_at, finished_at, lease_owner, lease_expires_at, timeout_seconds, unique_key,
       unique_until, unique_held, tags, meta, errors, result, progress, isolated,
       notify_done
FROM pgq_jobs
WHERE (%(before)s::bigint IS NULL OR id < %(before)s::bigint)
  AND (%(tag)s::text IS NULL OR tags <> '{}')
  AND (%(meta)s::jsonb IS NULL OR meta <> '{}'::jsonb OR %(meta)s::jsonb = '{}'::jsonb)
  AND (state IN ('cancelled', 'completed', 'failed')
       OR state IN ('available', 'retryable', 'scheduled') OR state = 'running')
  AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
  AND (%(states)s::text[] IS NULL OR state = ANY(%(states)s::text[]))
  AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
  AND (%(tasks)s::text[] IS NULL OR task = ANY(%(tasks)s::text[]))
  AND (%(tag)s::text IS NULL OR tags @> ARRAY[%(tag)s::text])
  AND (%(meta)s::jsonb IS NULL OR meta @> %(meta)s::jsonb)
  AND (%(unique_key)s::text IS NULL OR unique_key = %(unique_key)s::text)
  AND (%(error_type)s::text IS NULL OR coalesce(errors->-1->>'type', '') = %(error_type)s::text)
  AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s::timestamptz)
  AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s::timestamptz)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: job_states_of
-- The states of the given jobs (those an id-list action did not change: why not).
SELECT id, state FROM pgq_jobs WHERE id = ANY(%(ids)s::bigint[]);

-- name: job_retry_many
-- Operations (issue 14): what pgq.client.admin runs for app.jobs and app.queues.
--
-- Every job action is one statement per batch of at most batch jobs, and each batch
-- commits on its own (pgq's autocommit connection), so workers' claims keep flowing and
-- an interrupted run leaves every batch done or not done. Shape of each:
--   picked: the batch, walked in id order from after (the caller's keyset position),
--     fenced on the source states of the action, locked FOR UPDATE SKIP LOCKED so a
--     batch never waits on a row a worker or another operator holds (the rerun or the
--     next pass takes it);
--   changed: the UPDATE (or DELETE), fenced again on the state the row had when picked;
--   logged: one pgq_job_actions row per changed job, in the same statement, so a change
--     without its record (or the reverse) cannot commit.
-- The selection is one id list (ids, at most one batch) or a filter: each filter
-- parameter NULL means "any". With a custom plan (psycopg sends the values) the planner
-- folds the NULL tests away; the plans on a 1M-row table are in docs/operations.md.
-- The row back: how many jobs were picked, the largest id picked (the next keyset
-- position), the ids changed, and the queues of the changed jobs (for wake-ups).
-- Race rules (docs/operations.md): a worker's claim and finish are fenced on state
-- too, so whichever commits first wins and the other statement matches nothing.
--
-- Retry: failed, cancelled, retryable or scheduled jobs become available now (or
-- scheduled at run_at). The errors history is kept; finished_at is cleared. The job
-- gets at least one more attempt (a dead letter has used all of its), or
-- extra_attempts more than it has used. Never touches a running job.
WITH picked AS MATERIALIZED (
    SELECT id, state FROM pgq_jobs
    WHERE id > %(after)s::bigint
      AND state IN ('failed', 'cancelled', 'retryable', 'scheduled')
      AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
      AND (%(states)s::text[] IS NULL OR state = ANY(%(states)s::text[]))
      AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
      AND (%(tasks)s::text[] IS NULL OR task = ANY(%(tasks)s::text[]))
      AND (%(tag)s::text IS NULL OR tags @> ARRAY[%(tag)s::text])
      AND (%(meta)s::jsonb IS NULL OR meta @> %(meta)s::jsonb)
      AND (%(unique_key)s::text IS NULL OR unique_key = %(unique_key)s::text)
      AND (%(error_type)s::text IS NULL OR coalesce(errors->-1->>'type', '') = %(error_type)s::text)
      AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s::timestamptz)
      AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s::timestamptz)
    ORDER BY id
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), changed AS (
    UPDATE pgq_jobs AS j
    SET state = CASE WHEN %(run_at)s::timestamptz > coalesce(%(now)s::timestamptz, now())
                     THEN 'scheduled' ELSE 'available' END,
        run_at = coalesce(%(run_at)s::timestamptz, coalesce(%(now)s::timestamptz, now())),
        finished_at = NULL,
        max_attempts = CASE WHEN %(extra_attempts)s::int IS NULL
                            THEN greatest(j.max_attempts, j.attempt + 1)
                            ELSE greatest(j.max_attempts, j.attempt) + %(extra_attempts)s::int END
    FROM picked AS p
    WHERE j.id = p.id AND j.state = p.state
    RETURNING j.id, j.queue, p.state AS was
), logged AS (
    INSERT INTO pgq_job_actions (job_id, at, actor, action, reason, detail)
    SELECT c.id, coalesce(%(now)s::timestamptz, now()), %(actor)s::text, 'retry', %(reason)s::text,
           jsonb_build_object('from', c.was, 'run_at', %(run_at)s::timestamptz,
                              'extra_attempts', %(extra_attempts)s::int)
    FROM changed AS c
    ORDER BY c.id
)
SELECT (SELECT count(*) FROM picked)::int, (SELECT max(id) FROM picked),
       ARRAY(SELECT id FROM changed ORDER BY id),
       ARRAY(SELECT DISTINCT queue FROM changed);

-- name: job_cancel_many
-- Cancel jobs: available, scheduled, retryable or running jobs become cancelled, with
-- finished_at (so retention prunes them) and an errors entry naming who cancelled and
-- why. Fenced on the state each row was picked in: a running job's worker that stores
-- its outcome first wins (the row is no longer running, the cancel skips it), and a
-- cancel that commits first wins over the worker (whose fenced write then matches
-- nothing). A worker's claim or write that locked a row first is skipped, not waited
-- for. For each running job cancelled, a control message for its worker (lease_owner),
-- JSON, is returned, and sent as NOTIFY pgq_control when %(notify)s (no Redis: it is
-- delivered at commit; with Redis the caller publishes it after the commit). Jobs
-- someone waits for (notify_done) send NOTIFY pgq_done.
WITH picked AS MATERIALIZED (
    SELECT id, state FROM pgq_jobs
    WHERE id > %(after)s::bigint
      AND state IN ('available', 'scheduled', 'retryable', 'running')
      AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
      AND (%(states)s::text[] IS NULL OR state = ANY(%(states)s::text[]))
      AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
      AND (%(tasks)s::text[] IS NULL OR task = ANY(%(tasks)s::text[]))
      AND (%(tag)s::text IS NULL OR tags @> ARRAY[%(tag)s::text])
      AND (%(meta)s::jsonb IS NULL OR meta @> %(meta)s::jsonb)
      AND (%(unique_key)s::text IS NULL OR unique_key = %(unique_key)s::text)
      AND (%(error_type)s::text IS NULL OR coalesce(errors->-1->>'type', '') = %(error_type)s::text)
      AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s::timestamptz)
      AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s::timestamptz)
    ORDER BY id
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), changed AS (
    UPDATE pgq_jobs AS j
    SET state = 'cancelled',
        finished_at = coalesce(%(now)s::timestamptz, now()),
        errors = j.errors || jsonb_build_array(jsonb_build_object(
            'attempt', j.attempt, 'at', coalesce(%(now)s::timestamptz, now()), 'type', 'pgq.Cancelled',
            'message', coalesce(%(reason)s::text, 'cancelled by ' || %(actor)s::text),
            'traceback', '', 'worker', CASE WHEN p.state = 'running' THEN j.lease_owner END,
            'actor', %(actor)s::text))
    FROM picked AS p
    WHERE j.id = p.id AND j.state = p.state
    RETURNING j.id, j.queue, p.state AS was, j.notify_done,
              CASE WHEN p.state = 'running' THEN jsonb_build_object(
                  'action', 'cancel', 'worker', j.lease_owner, 'job', j.id,
                  'attempt', j.attempt, 'actor', %(actor)s::text,
                  'reason', %(reason)s::text)::text END AS control
), logged AS (
    INSERT INTO pgq_job_actions (job_id, at, actor, action, reason, detail)
    SELECT c.id, coalesce(%(now)s::timestamptz, now()), %(actor)s::text, 'cancel', %(reason)s::text,
           jsonb_build_object('from', c.was)
    FROM changed AS c
    ORDER BY c.id
)
SELECT (SELECT count(*) FROM picked)::int, (SELECT max(id) FROM picked),
       ARRAY(SELECT id FROM changed ORDER BY id),
       ARRAY(SELECT DISTINCT queue FROM changed),
       ARRAY(SELECT control FROM changed WHERE control IS NOT NULL ORDER BY id),
       (SELECT count(pg_notify('pgq_control', control)) FROM changed
        WHERE control IS NOT NULL AND %(notify)s::boolean)::int
       + (SELECT count(pg_notify('pgq_done', id::text)) FROM changed WHERE notify_done)::int;

-- name: job_delete_many
-- Delete finished jobs (completed, failed, cancelled) now, whatever retention says.
-- The action row outlives the job, with its task and queue in detail.
WITH picked AS MATERIALIZED (
    SELECT id, state FROM pgq_jobs
    WHERE id > %(after)s::bigint
      AND state IN ('completed', 'failed', 'cancelled')
      AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
      AND (%(states)s::text[] IS NULL OR state = ANY(%(states)s::text[]))
      AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
      AND (%(tasks)s::text[] IS NULL OR task = ANY(%(tasks)s::text[]))
      AND (%(tag)s::text IS NULL OR tags @> ARRAY[%(tag)s::text])
      AND (%(meta)s::jsonb IS NULL OR meta @> %(meta)s::jsonb)
      AND (%(unique_key)s::text IS NULL OR unique_key = %(unique_key)s::text)
      AND (%(error_type)s::text IS NULL OR coalesce(errors->-1->>'type', '') = %(error_type)s::text)
      AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s::timestamptz)
      AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s::timestamptz)
    ORDER BY id
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), changed AS (
    DELETE FROM pgq_jobs AS j
    USING picked AS p
    WHERE j.id = p.id AND j.state = p.state
    RETURNING j.id, j.queue, j.task, p.state AS was
), logged AS (
    INSERT INTO pgq_job_actions (job_id, at, actor, action, reason, detail)
    SELECT c.id, coalesce(%(now)s::timestamptz, now()), %(actor)s::text, 'delete', %(reason)s::text,
           jsonb_build_object('from', c.was, 'task', c.task, 'queue', c.queue)
    FROM changed AS c
    ORDER BY c.id
)
SELECT (SELECT count(*) FROM picked)::int, (SELECT max(id) FROM picked),
       ARRAY(SELECT id FROM changed ORDER BY id),
       ARRAY(SELECT DISTINCT queue FROM changed);

-- name: job_reschedule_many
-- Move waiting jobs (available, scheduled, retryable) to run at run_at: scheduled if
-- that is in the future, available otherwise; a retryable job stays retryable.
WITH picked AS MATERIALIZED (
    SELECT id, state FROM pgq_jobs
    WHERE id > %(after)s::bigint
      AND state IN ('available', 'scheduled', 'retryable')
      AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
      AND (%(states)s::text[] IS NULL OR state = ANY(%(states)s::text[]))
      AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
      AND (%(tasks)s::text[] IS NULL OR task = ANY(%(tasks)s::text[]))
      AND (%(tag)s::text IS NULL OR tags @> ARRAY[%(tag)s::text])
      AND (%(meta)s::jsonb IS NULL OR meta @> %(meta)s::jsonb)
      AND (%(unique_key)s::text IS NULL OR unique_key = %(unique_key)s::text)
      AND (%(error_type)s::text IS NULL OR coalesce(errors->-1->>'type', '') = %(error_type)s::text)
      AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s::timestamptz)
      AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s::timestamptz)
    ORDER BY id
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), changed AS (
    UPDATE pgq_jobs AS j
    SET state = CASE WHEN j.state = 'retryable' THEN 'retryable'
                     WHEN %(run_at)s::timestamptz > coalesce(%(now)s::timestamptz, now()) THEN 'scheduled'
                     ELSE 'available' END,
        run_at = %(run_at)s::timestamptz
    FROM picked AS p
    WHERE j.id = p.id AND j.state = p.state
    RETURNING j.id, j.queue, p.state AS was
), logged AS (
    INSERT INTO pgq_job_actions (job_id, at, actor, action, reason, detail)
    SELECT c.id, coalesce(%(now)s::timestamptz, now()), %(actor)s::text, 'reschedule', %(reason)s::text,
           jsonb_build_object('from', c.was, 'run_at', %(run_at)s::timestamptz)
    FROM changed AS c
    ORDER BY c.id
)
SELECT (SELECT count(*) FROM picked)::int, (SELECT max(id) FROM picked),
       ARRAY(SELECT id FROM changed ORDER BY id),
       ARRAY(SELECT DISTINCT queue FROM changed);

-- name: job_set_priority_many
-- Change the priority of waiting jobs (available, scheduled, retryable).
WITH picked AS MATERIALIZED (
    SELECT id, state FROM pgq_jobs
    WHERE id > %(after)s::bigint
      AND state IN ('available', 'scheduled', 'retryable')
      AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
      AND (%(states)s::text[] IS NULL OR state = ANY(%(states)s::text[]))
      AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
      AND (%(tasks)s::text[] IS NULL OR task = ANY(%(tasks)s::text[]))
      AND (%(tag)s::text IS NULL OR tags @> ARRAY[%(tag)s::text])
      AND (%(meta)s::jsonb IS NULL OR meta @> %(meta)s::jsonb)
      AND (%(unique_key)s::text IS NULL OR unique_key = %(unique_key)s::text)
      AND (%(error_type)s::text IS NULL OR coalesce(errors->-1->>'type', '') = %(error_type)s::text)
      AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s::timestamptz)
      AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s::timestamptz)
    ORDER BY id
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), changed AS (
    UPDATE pgq_jobs AS j
    SET priority = %(priority)s::smallint
    FROM picked AS p
    WHERE j.id = p.id AND j.state = p.state
    RETURNING j.id, j.queue, p.state AS was, j.priority
), logged AS (
    INSERT INTO pgq_job_actions (job_id, at, actor, action, reason, detail)
    SELECT c.id, coalesce(%(now)s::timestamptz, now()), %(actor)s::text, 'set_priority', %(reason)s::text,
           jsonb_build_object('from', c.was, 'priority', c.priority)
    FROM changed AS c
    ORDER BY c.id
)
SELECT (SELECT count(*) FROM picked)::int, (SELECT max(id) FROM picked),
       ARRAY(SELECT id FROM changed ORDER BY id),
       ARRAY(SELECT DISTINCT queue FROM changed);

-- name: queue_pause
-- Pause a queue: every worker's next claim skips it (job_claim's wanted list). Running
-- jobs finish normally. Returns the row.
INSERT INTO pgq_queues AS q (name, paused, paused_at, paused_by, pause_reason, updated_at)
VALUES (%(name)s, true, coalesce(%(now)s::timestamptz, now()), %(actor)s::text, %(reason)s::text, coalesce(%(now)s::timestamptz, now()))
ON CONFLICT (name) DO UPDATE
SET paused = true, paused_at = excluded.paused_at, paused_by = excluded.paused_by,
    pause_reason = excluded.pause_reason, updated_at = excluded.updated_at
RETURNING q.name, q.paused, q.paused_at, q.paused_by, q.pause_reason;

-- name: queue_resume
-- Resume a queue; the row stays (with who paused it last, and when) for later settings.
INSERT INTO pgq_queues AS q (name, paused, paused_by, updated_at)
VALUES (%(name)s, false, %(actor)s::text, coalesce(%(now)s::timestamptz, now()))
ON CONFLICT (name) DO UPDATE
SET paused = false, updated_at = excluded.updated_at
RETURNING q.name, q.paused, q.paused_at, q.paused_by, q.pause_reason;

-- name: queue_list
-- Every queue that has jobs or a pgq_queues row, with its paused flag. The distinct
-- queues of pgq_jobs cost a scan of the table: an operator's call, not a dashboard's
-- (the cached stats of issue 14 item 3 are for those).
SELECT coalesce(j.queue, q.name), coalesce(q.paused, false), q.paused_at, q.paused_by,
       q.pause_reason
FROM (SELECT DISTINCT queue FROM pgq_jobs) AS j
FULL JOIN pgq_queues AS q ON q.name = j.queue
ORDER BY 1;

-- name: queue_settings
-- The named queues (a dashboard passes the stats cache's names) and every queue with a
-- pgq_queues row, with its settings: queue_list without the scan of pgq_jobs, so a page
-- that refreshes every few seconds reads only the small settings table.
SELECT coalesce(n.name, q.name), coalesce(q.paused, false), q.paused_at, q.paused_by,
       q.pause_reason
FROM unnest(%(names)s::text[]) AS n(name)
FULL JOIN pgq_queues AS q ON q.name = n.name
ORDER BY 1;

-- name: job_count
-- How many jobs a filter matches: the size of a bulk action before it runs (the CLI's
-- --dry-run, progress bar and confirmation; the caller narrows states to the action's
-- source states). Reads what the filter selects, like a batch of the action does: an
-- operator's call, not a dashboard's.
SELECT count(*)
FROM pgq_jobs
WHERE (%(states)s::text[] IS NULL OR state = ANY(%(states)s::text[]))
  AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
  AND (%(tasks)s::text[] IS NULL OR task = ANY(%(tasks)s::text[]))
  AND (%(tag)s::text IS NULL OR tags @> ARRAY[%(tag)s::text])
  AND (%(meta)s::jsonb IS NULL OR meta @> %(meta)s::jsonb)
  AND (%(unique_key)s::text IS NULL OR unique_key = %(unique_key)s::text)
  AND (%(error_type)s::text IS NULL OR coalesce(errors->-1->>'type', '') = %(error_type)s::text)
  AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s::timestamptz)
  AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s::timestamptz);

-- name: job_actions_of
-- The operator actions on one job, oldest first (pgq_job_actions_job_idx: one range).
SELECT id, job_id, at, actor, action, reason, detail
FROM pgq_job_actions
WHERE job_id = %(id)s
ORDER BY at, id;

-- name: worker_list
-- The worker registry (pgq_workers), as its heartbeats left it; with a queue, the
-- workers serving it (a scan of the registry: one row per worker process). A worker is
-- alive while its latest heartbeat is younger than its lease (it beats every third).
SELECT id, host, pid, queues, concurrency, version, started_at, last_seen, running, tasks,
       lease_seconds,
       last_seen > coalesce(%(now)s::timestamptz, now()) - make_interval(secs => lease_seconds)
FROM pgq_workers
WHERE %(queue)s::text IS NULL OR queues ? %(queue)s::text
ORDER BY host, pid, id;

-- name: worker_seen
-- A worker process's heartbeat in the registry: its row made at start (started_at null:
-- the database clock's now, returned for the later calls) and refreshed once per
-- heartbeat interval, on the heartbeat's own connection. A row pruned while the process
-- was cut off comes back with its first start time.
INSERT INTO pgq_workers AS w (id, host, pid, queues, concurrency, version, tasks,
                              lease_seconds, started_at, last_seen, running)
VALUES (%(id)s, %(host)s, %(pid)s, %(queues)s::jsonb, %(concurrency)s, %(version)s,
        %(tasks)s::jsonb, %(lease_seconds)s,
        coalesce(%(started_at)s::timestamptz, %(now)s::timestamptz, now()),
        coalesce(%(now)s::timestamptz, now()), %(running)s)
ON CONFLICT (id) DO UPDATE
SET last_seen = excluded.last_seen, running = excluded.running
RETURNING w.started_at;

-- name: worker_gone
-- A worker process stopping cleanly takes its row out of the registry.
DELETE FROM pgq_workers WHERE id = %(id)s;

-- name: worker_prune
-- Maintenance: registry rows of processes not seen for ``factor`` leases (they died, or
-- were cut off; one that comes back registers again). A scan of the registry.
DELETE FROM pgq_workers
WHERE last_seen < coalesce(%(now)s::timestamptz, now())
                  - make_interval(secs => %(factor)s * lease_seconds)
RETURNING id;

-- name: schema_version
-- The pgq migration this database is at; a worker refuses to start on an old schema.
SELECT version_num FROM pgq_alembic_version;

-- name: queue_notify
-- PostgreSQL wake-up: one NOTIFY per queue, in the enqueuing transaction, so it is
-- delivered only if that transaction commits. PostgreSQL folds identical notifications
-- of one transaction into one, so a bulk enqueue sends one per queue, not one per job.
SELECT pg_notify('pgq_wakeup', q) FROM unnest(%(queues)s::text[]) AS q;

-- name: instance_id
-- This database's pgq instance id (namespace of its Redis keys), made on first use. The
-- insert's row is not visible to the SELECT of the same statement, hence the UNION.
WITH made AS (
    INSERT INTO pgq_instance (id) VALUES (%(candidate)s)
    ON CONFLICT DO NOTHING
    RETURNING id
)
SELECT id FROM made
UNION ALL
SELECT id FROM pgq_instance
LIMIT 1;

-- name: lock_acquire
-- Take a run-time lock if it is free or its holder's lease on it expired (database clock).
INSERT INTO pgq_locks AS l (key, token, holder, expires_at)
VALUES (%(key)s, %(token)s, %(holder)s, now() + make_interval(secs => %(ttl)s))
ON CONFLICT (key) DO UPDATE
SET token = excluded.token, holder = excluded.holder, expires_at = excluded.expires_at
WHERE l.expires_at < now() OR l.token = excluded.token
RETURNING l.key;

-- name: lock_renew
UPDATE pgq_locks SET expires_at = now() + make_interval(secs => %(ttl)s)
WHERE key = %(key)s AND token = %(token)s
RETURNING key;

-- name: lock_release
DELETE FROM pgq_locks WHERE key = %(key)s AND token = %(token)s;

-- name: lock_live
-- Is a PostgreSQL-side lock on this key still live? Checked before taking it in Redis,
-- so a lock taken in the fallback during a Redis outage is honoured after Redis returns.
SELECT 1 FROM pgq_locks WHERE key = %(key)s AND token <> %(token)s AND expires_at >= now();

-- name: leader_acquire
-- Become (or stay) leader if the role is free, expired, or already ours. A new leadership
-- (a takeover, or ours after it lapsed) gets a new, larger term: the fencing token that
-- lets leader work refuse a paused ex-leader. Returns the term, or no row.
INSERT INTO pgq_leaders AS l (name, holder, term, expires_at)
VALUES (%(name)s, %(holder)s, nextval('pgq_leader_terms'), now() + make_interval(secs => %(ttl)s))
ON CONFLICT (name) DO UPDATE
SET holder = excluded.holder, expires_at = excluded.expires_at,
    term = CASE WHEN l.holder = excluded.holder AND l.expires_at >= now() THEN l.term
                ELSE excluded.term END
WHERE l.expires_at < now() OR l.holder = excluded.holder
RETURNING l.term;

-- name: leader_renew
-- Stay leader if we are (unexpired); never take the role.
UPDATE pgq_leaders SET expires_at = now() + make_interval(secs => %(ttl)s)
WHERE name = %(name)s AND holder = %(holder)s AND expires_at >= now()
RETURNING term;

-- name: leader_term_next
-- A term for a leadership about to be tried in Redis. Drawn *before* the attempt, so a
-- process that stalls between winning and learning its term cannot hold a term larger
-- than its successor's.
SELECT nextval('pgq_leader_terms');

-- name: leader_live
-- Someone else's unexpired PostgreSQL-side leadership (honoured by Redis-side elections).
SELECT 1 FROM pgq_leaders WHERE name = %(name)s AND holder <> %(holder)s AND expires_at >= now();

-- name: leader_release
DELETE FROM pgq_leaders WHERE name = %(name)s AND holder = %(holder)s;

-- name: clock_now
-- The clock every scheduling decision uses: the database's, or the injected one in tests.
SELECT coalesce(%(now)s::timestamptz, now());

-- name: cron_last_fires
-- The latest tick fired per entry: one backward step of the primary key each.
SELECT e, (SELECT max(f.fire_at) FROM pgq_cron_fires AS f WHERE f.entry = e)
FROM unnest(%(entries)s::text[]) AS e;

-- name: cron_fire_claim
-- Record the fires of a batch of ticks, each with a job id drawn now. The primary key
-- (entry, fire_at) makes a tick fire once however many schedulers try: only the rows
-- this statement inserted come back, and only their jobs are written, in the same
-- transaction. Also returns the clock, so the jobs' timestamps are the database's.
INSERT INTO pgq_cron_fires AS f (entry, fire_at, job_id, enqueued_at, scheduler, term)
SELECT t.entry, t.fire_at, nextval(pg_get_serial_sequence('pgq_jobs', 'id')),
       coalesce(%(now)s::timestamptz, now()), %(scheduler)s, %(term)s
FROM unnest(%(entries)s::text[], %(fire_ats)s::timestamptz[]) AS t(entry, fire_at)
ORDER BY t.fire_at, t.entry
ON CONFLICT (entry, fire_at) DO NOTHING
RETURNING f.entry, f.fire_at, f.job_id, f.enqueued_at;

-- name: cron_fires_prune
-- Forget fire records older than the cutoff, but always keep each entry's latest: it
-- is where catch-up after downtime starts from.
DELETE FROM pgq_cron_fires AS f
WHERE f.fire_at < %(before)s
  AND f.fire_at < (SELECT max(g.fire_at) FROM pgq_cron_fires AS g WHERE g.entry = f.entry)
RETURNING 1;

-- name: job_prune
-- Retention: delete one bounded batch of finished jobs of one state, oldest first, via
-- pgq_jobs_finished_idx. Never a row in another state, and never a completed row whose
-- unique key still guards against duplicates (unique_until in the future). SKIP LOCKED:
-- an operator's open transaction on a row just defers it to a later batch.
WITH doomed AS (
    SELECT id FROM pgq_jobs
    WHERE state = %(state)s
      AND finished_at < coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(keep)s)
      AND NOT (unique_held AND state = 'completed'
               AND unique_until > coalesce(%(now)s::timestamptz, now()))
    ORDER BY finished_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM pgq_jobs AS j USING doomed
    WHERE j.id = doomed.id AND j.state = %(state)s
    RETURNING 1
)
SELECT count(*)::int FROM deleted;

-- name: session_async_commit
-- A worker's claim and outcome connections with --async-commit: commits return before
-- the WAL is flushed (docs/performance.md says what that risks). For the session.
SELECT set_config('synchronous_commit', 'off', false);

-- name: session_statement_timeout
-- Coordination's PostgreSQL connections: a statement blocked this long fails, so
-- coordination never hangs its caller. For the session. (The next statement,
-- wakeup_listen, a worker's wake-up listener, carries no comment of its own: its
-- text in pg_stat_activity is exactly "LISTEN pgq_wakeup", which is how operators,
-- tests and benchmarks find the listening workers.)
SELECT set_config('statement_timeout', %(ms)s::text, false);

-- name: wakeup_listen
LISTEN pgq_wakeup;

-- name: control_listen
-- A worker's control messages (an operator's cancel of a running job), on the wake-up
-- listener's connection, just before wakeup_listen (whose text must be the session's
-- last: see session_statement_timeout's comment).
LISTEN pgq_control;

-- name: control_notify
-- Control messages a Redis PUBLISH did not deliver (no subscriber, Redis failed), sent
-- after the cancel committed.
SELECT pg_notify('pgq_control', m) FROM unnest(%(messages)s::text[]) AS m;

-- name: done_listen
-- A result waiter's connection (app.jobs.result): job ids that finished while flagged.
LISTEN pgq_done;

-- name: job_result_watch
-- Ask the job to say when it finishes (NOTIFY pgq_done from its final write); the caller
-- LISTENs first and reads the row after this commits, so no finish is missed: one that
-- committed before sees the flag unset but is seen by the read.
UPDATE pgq_jobs SET notify_done = true
WHERE id = %(id)s AND NOT notify_done AND state NOT IN ('completed', 'failed', 'cancelled');

-- name: job_result_read
-- A job's state, result and last error entry (app.jobs.result).
SELECT state, result, errors -> -1 FROM pgq_jobs WHERE id = %(id)s;

-- name: stats_now
-- The stats leader's clock for one refresh, and pgq_jobs' row estimate (pg_class, kept
-- by VACUUM and ANALYZE; -1 if never analyzed).
SELECT coalesce(%(now)s::timestamptz, now()),
       (SELECT reltuples::bigint FROM pg_class WHERE oid = 'pgq_jobs'::regclass);

-- name: stats_active_counts
-- Exact counts per queue, state and task of the jobs waiting (available, scheduled,
-- retryable: pgq_jobs_claim_idx), running (pgq_jobs_running_idx) and failed (the dead
-- letters: pgq_jobs_finished_idx), each read through its partial index and capped at
-- %(cap)s rows, so a backlog of millions costs at most that many heap rows per part: a
-- part at its cap is reported as capped and its figures come from the planner's
-- estimates (stats_estimates) instead. retried_* count retryable jobs whose latest error
-- came in the last 1, 5 and 15 minutes; due counts the waiting jobs a claim could take
-- now (run_at reached, as job_claim asks), which tells an unserved queue (no live
-- worker) that has work from one that has only future jobs. run_at is in the claim
-- index, so due costs no extra read.
SELECT a.part, a.queue, a.state, a.task, count(*)::bigint,
       count(*) FILTER (WHERE a.error_at > %(now)s::timestamptz - interval '1 minute'),
       count(*) FILTER (WHERE a.error_at > %(now)s::timestamptz - interval '5 minutes'),
       count(*) FILTER (WHERE a.error_at > %(now)s::timestamptz - interval '15 minutes'),
       count(*) FILTER (WHERE a.due)
FROM ((SELECT 'waiting' AS part, queue, state, task,
              CASE WHEN state = 'retryable' THEN (errors -> -1 ->> 'at')::timestamptz END AS error_at,
              run_at <= %(now)s::timestamptz AS due
       FROM pgq_jobs
       WHERE state IN ('available', 'retryable', 'scheduled')
       LIMIT %(cap)s)
      UNION ALL
      (SELECT 'running', queue, state, task, NULL::timestamptz, false
       FROM pgq_jobs
       WHERE state = 'running'
       LIMIT %(cap)s)
      UNION ALL
      (SELECT 'failed', queue, state, task, NULL::timestamptz, false
       FROM pgq_jobs
       WHERE state IN ('cancelled', 'completed', 'failed') AND state = 'failed'
       LIMIT %(cap)s)) AS a
GROUP BY a.part, a.queue, a.state, a.task;

-- name: stats_estimates
-- The planner's estimate of jobs per (queue, state): the multivariate MCV list of the
-- pgq_jobs_queue_state statistics (migration 0008; refreshed by autovacuum's ANALYZE)
-- times pgq_jobs' row estimate. Catalogue reads only: no table access at all. A pair
-- too rare for the list (the statistics target keeps the 100 most common) is missing.
SELECT s.most_common_vals[i][1], s.most_common_vals[i][2],
       round(s.most_common_freqs[i] * greatest(c.reltuples, 0))::bigint
FROM pg_stats_ext AS s
JOIN pg_class AS c ON c.oid = 'pgq_jobs'::regclass
CROSS JOIN LATERAL generate_subscripts(s.most_common_freqs, 1) AS i
WHERE s.statistics_name = 'pgq_jobs_queue_state' AND s.tablename = 'pgq_jobs'
  AND s.schemaname = current_schema();

-- name: stats_finished_window
-- Jobs finished in the last 1, 5 and 15 minutes per queue and state (retried: those
-- that finished after more than one attempt), from one range of pgq_jobs_finished_idx
-- (state, finished_at) per finished state, newest first, each capped at %(cap)s rows:
-- the cost is the jobs finished in 15 minutes (heap rows, for their queue), at most the
-- cap per state. At its cap a state's sample covers the last few minutes only: the
-- caller compares the oldest row read with each window's start (the windows it does
-- not reach are lower bounds). Each branch names its state with "=": with the index
-- predicate's IN list alone the planner drops the state from the index condition and
-- walks the whole index.
SELECT w.queue, w.state,
       count(*) FILTER (WHERE w.finished_at > %(now)s::timestamptz - interval '1 minute'),
       count(*) FILTER (WHERE w.finished_at > %(now)s::timestamptz - interval '5 minutes'),
       count(*),
       count(*) FILTER (WHERE w.attempt > 1 AND w.finished_at > %(now)s::timestamptz - interval '1 minute'),
       count(*) FILTER (WHERE w.attempt > 1 AND w.finished_at > %(now)s::timestamptz - interval '5 minutes'),
       count(*) FILTER (WHERE w.attempt > 1), min(w.finished_at)
FROM ((SELECT queue, state, finished_at, attempt FROM pgq_jobs
       WHERE state IN ('cancelled', 'completed', 'failed') AND state = 'completed'
         AND finished_at > %(now)s::timestamptz - interval '15 minutes'
       ORDER BY finished_at DESC LIMIT %(cap)s)
      UNION ALL
      (SELECT queue, state, finished_at, attempt FROM pgq_jobs
       WHERE state IN ('cancelled', 'completed', 'failed') AND state = 'failed'
         AND finished_at > %(now)s::timestamptz - interval '15 minutes'
       ORDER BY finished_at DESC LIMIT %(cap)s)
      UNION ALL
      (SELECT queue, state, finished_at, attempt FROM pgq_jobs
       WHERE state IN ('cancelled', 'completed', 'failed') AND state = 'cancelled'
         AND finished_at > %(now)s::timestamptz - interval '15 minutes'
       ORDER BY finished_at DESC LIMIT %(cap)s)) AS w
GROUP BY w.queue, w.state;

-- name: stats_runtimes
-- Run-time p50 and p95 per queue and task of the last %(sample)s jobs completed in the
-- last 15 minutes (started_at to finished_at), newest first along pgq_jobs_finished_idx.
SELECT r.queue, r.task, count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY r.seconds),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY r.seconds)
FROM (SELECT queue, task, extract(epoch FROM finished_at - started_at)::float8 AS seconds
      FROM pgq_jobs
      WHERE state IN ('cancelled', 'completed', 'failed') AND state = 'completed'
        AND finished_at > %(now)s::timestamptz - interval '15 minutes'
        AND started_at IS NOT NULL
      ORDER BY finished_at DESC
      LIMIT %(sample)s) AS r
GROUP BY r.queue, r.task;

-- name: stats_lag
-- Per queue, when its oldest due job became due: a loose index scan of
-- pgq_jobs_claim_idx (queue, priority, run_at, id): one probe per (queue, priority)
-- present, then the first run_at of each (the index's order), whatever the backlog.
WITH RECURSIVE qp AS (
    (SELECT queue, priority FROM pgq_jobs
     WHERE state IN ('available', 'retryable', 'scheduled')
     ORDER BY queue, priority LIMIT 1)
    UNION ALL
    SELECT n.queue, n.priority
    FROM qp
    CROSS JOIN LATERAL (
        SELECT queue, priority FROM pgq_jobs
        WHERE state IN ('available', 'retryable', 'scheduled')
          AND (queue, priority) > (qp.queue, qp.priority)
        ORDER BY queue, priority LIMIT 1) AS n
)
SELECT qp.queue, min(f.run_at)
FROM qp
LEFT JOIN LATERAL (
    SELECT run_at FROM pgq_jobs
    WHERE state IN ('available', 'retryable', 'scheduled')
      AND queue = qp.queue AND priority = qp.priority AND run_at <= %(now)s::timestamptz
    ORDER BY run_at LIMIT 1) AS f ON true
GROUP BY qp.queue;

-- name: stats_paused
-- Queues with a pgq_queues row, and whether they are paused (a small table).
SELECT name, paused FROM pgq_queues;

-- name: stats_store
-- The stats leader's document, for readers without Redis (one row per key).
INSERT INTO pgq_stats AS s (key, data, computed_at)
VALUES (%(key)s, %(data)s::jsonb, %(computed_at)s::timestamptz)
ON CONFLICT (key) DO UPDATE SET data = excluded.data, computed_at = excluded.computed_at;

-- name: stats_load
-- A stats document as text and its age by the database clock (primary key).
SELECT data::text, extract(epoch FROM coalesce(%(now)s::timestamptz, now()) - computed_at)::float8
FROM pgq_stats
WHERE key = %(key)s;

-- name: job_dead_letter_groups
-- Dead letters grouped by task and the type of their last error (the dashboard's
-- failures page): only jobs that failed in the last %(within)s, one range of
-- pgq_jobs_finished_idx (state, finished_at) whatever the table's history, then one
-- primary-key probe per group for its newest job's message. It names its state
-- with "=" as stats_finished_window does, so the index condition keeps it. A job with
-- no errors entry groups under the type "" (the error_type filter matches it so too).
WITH g AS (
    SELECT task, coalesce(errors->-1->>'type', '') AS error_type, count(*) AS n,
           max(finished_at) AS latest_at, max(id) AS sample_id
    FROM pgq_jobs
    WHERE state IN ('cancelled', 'completed', 'failed') AND state = 'failed'
      AND finished_at >= coalesce(%(now)s::timestamptz, now()) - %(within)s::interval
    GROUP BY 1, 2
    ORDER BY n DESC, latest_at DESC, task, error_type
    LIMIT %(limit)s
)
SELECT g.task, g.error_type, g.n, g.latest_at, g.sample_id,
       coalesce(j.errors->-1->>'message', '')
FROM g LEFT JOIN pgq_jobs AS j ON j.id = g.sample_id
ORDER BY g.n DESC, g.latest_at DESC, g.task, g.error_type;

-- name: cron_recent_fires
-- The latest %(per_entry)s fires of each declared entry, newest first (one backward
-- range of the (entry, fire_at) primary key per entry, LATERAL), each with its job's
-- state now (NULL once the job is pruned): one statement for the whole cron page.
SELECT e.entry, f.fire_at, f.job_id, f.enqueued_at, f.scheduler, j.state
FROM unnest(%(entries)s::text[]) AS e(entry)
CROSS JOIN LATERAL (
    SELECT fire_at, job_id, enqueued_at, scheduler FROM pgq_cron_fires
    WHERE entry = e.entry
    ORDER BY fire_at DESC
    LIMIT %(per_entry)s) AS f
LEFT JOIN pgq_jobs AS j ON j.id = f.job_id
ORDER BY e.entry, f.fire_at DESC;

-- name: api_key_create
-- A new HTTP API key (pgq.client.apikeys): only the secret's hash is stored. A taken
-- name or hash fails on its unique constraint (the caller names the name).
INSERT INTO pgq_api_keys (name, scopes, key_hash, created_at, created_by)
VALUES (%(name)s, %(scopes)s::text[], %(key_hash)s, coalesce(%(now)s::timestamptz, now()),
        %(actor)s)
ON CONFLICT (name) DO NOTHING
RETURNING id, name, scopes, created_at, created_by, last_used_at, revoked_at;

-- name: api_key_list
-- Every API key, never its hash (a small table).
SELECT id, name, scopes, created_at, created_by, last_used_at, revoked_at
FROM pgq_api_keys
ORDER BY name;

-- name: api_key_revoke
-- Revoke a key by name; a key revoked already keeps its first revocation.
UPDATE pgq_api_keys
SET revoked_at = coalesce(revoked_at, coalesce(%(now)s::timestamptz, now())),
    revoked_by = CASE WHEN revoked_at IS NULL THEN %(actor)s ELSE revoked_by END
WHERE name = %(name)s
RETURNING id, name, scopes, created_at, created_by, last_used_at, revoked_at;

-- name: api_key_verify
-- The live key with this hash (unique index: one probe), and its last use recorded, but
-- only when the recorded one is a minute old or more: a busy client costs one write a
-- minute, not one per request (the UPDATE matches nothing otherwise, and writes nothing).
WITH k AS (
    SELECT id, name, scopes, created_at, created_by, last_used_at, revoked_at
    FROM pgq_api_keys
    WHERE key_hash = %(key_hash)s AND revoked_at IS NULL
), touched AS (
    UPDATE pgq_api_keys AS a SET last_used_at = coalesce(%(now)s::timestamptz, now())
    FROM k
    WHERE a.id = k.id
      AND (a.last_used_at IS NULL
           OR a.last_used_at <= coalesce(%(now)s::timestamptz, now()) - interval '1 minute')
    RETURNING a.last_used_at
)
SELECT k.id, k.name, k.scopes, k.created_at, k.created_by,
       coalesce((SELECT last_used_at FROM touched), k.last_used_at), k.revoked_at
FROM k;

-- name: idempotency_claim
-- Take an idempotency key for this request, in the caller's transaction (which then
-- enqueues and sets job_id before committing). A concurrent request with the same key
-- waits on the primary key until that commit, then takes nothing and reads the row. A
-- key older than %(ttl)s seconds is replaced (the request is a new one). Returns true
-- when this request took the key.
INSERT INTO pgq_idempotency_keys AS k (key, fingerprint, created_at)
VALUES (%(key)s, %(fingerprint)s, coalesce(%(now)s::timestamptz, now()))
ON CONFLICT (key) DO UPDATE
SET fingerprint = excluded.fingerprint, job_id = NULL, created_at = excluded.created_at
WHERE k.created_at <= excluded.created_at - make_interval(secs => %(ttl)s)
RETURNING true;

-- name: idempotency_read
-- The request that took a key first: its fingerprint and job.
SELECT fingerprint, job_id FROM pgq_idempotency_keys WHERE key = %(key)s;

-- name: idempotency_set_job
-- The job the request that took the key enqueued (same transaction as the claim).
UPDATE pgq_idempotency_keys SET job_id = %(job_id)s WHERE key = %(key)s;

-- name: idempotency_prune
-- Maintenance: forget one bounded batch of expired idempotency keys (a reuse replaces
-- an expired key anyway; this keeps the table to a day's keys). No index on created_at:
-- the table holds a day of keys, and the batch's scan stops at %(batch)s rows.
DELETE FROM pgq_idempotency_keys
WHERE key IN (SELECT key FROM pgq_idempotency_keys
              WHERE created_at <= coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(ttl)s)
              LIMIT %(batch)s
              FOR UPDATE SKIP LOCKED)
RETURNING 1;
