-- The least an allocation can be on PostgreSQL: the pick, the session, the
-- hold and the event on narrow tables, without row-level security, checks or
-- functions. Set-up for floor/alloc.sql (README: the floor on this machine).
DROP TABLE IF EXISTS ev, ses, vm;
CREATE TABLE vm (id bigint PRIMARY KEY, project_id bigint NOT NULL, last_stopped timestamptz, live bigint, status text NOT NULL);
CREATE INDEX vm_free ON vm (project_id, last_stopped NULLS FIRST, id) WHERE live IS NULL AND status IN ('STOPPED','RUNNING');
INSERT INTO vm SELECT i, 1, NULL, NULL, 'STOPPED' FROM generate_series(1, 200000) i;
CREATE TABLE ses (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, vm_id bigint NOT NULL, user_id bigint NOT NULL, status text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE UNIQUE INDEX ses_live ON ses (vm_id) WHERE status IN ('REQUESTED','STARTING','ACTIVE','TERMINATING');
CREATE TABLE ev (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, action text NOT NULL, vm_id bigint, session_id bigint, details jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
VACUUM ANALYZE vm;
