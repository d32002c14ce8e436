-- vmdesk team store, step 1: tables, invariants, row-level security and the
-- functions through which every change is made.
--
-- Placeholders, replaced with quoted names before this runs (see src/schema.rs):
--   @OWNER@ @USERS@ @ADMINS@  the store's roles, as identifiers
--   @ADMINS_LIT@              the admin group's name, as a literal
-- It runs as @OWNER@, who owns every object below. Users hold no write grant
-- on any table: they read through row-level security and change through the
-- SECURITY DEFINER functions, which check who calls (session_user, the login
-- that cannot be changed without superuser) before acting.

CREATE SCHEMA vmdesk;
REVOKE ALL ON SCHEMA vmdesk FROM PUBLIC;
GRANT USAGE ON SCHEMA vmdesk TO @USERS@;

CREATE TABLE vmdesk.settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO vmdesk.settings (key, value) VALUES ('install_id', md5(random()::text || clock_timestamp()::text));

CREATE TABLE vmdesk.users (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    -- Mirrors membership in @ADMINS@, which is what grants the rights.
    role       text NOT NULL CHECK (role IN ('admin', 'user')),
    -- Kept equal to the sum of the user's ledger entries by ledger_apply.
    balance    bigint NOT NULL DEFAULT 0 CHECK (balance >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE vmdesk.projects (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE vmdesk.workspaces (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id bigint NOT NULL REFERENCES vmdesk.projects(id),
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, name)
);

CREATE TABLE vmdesk.hosts (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    kind       text NOT NULL CHECK (kind IN ('libvirt', 'azure')),
    uri        text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE vmdesk.vms (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name               text NOT NULL UNIQUE,
    os_type            text NOT NULL,
    ram_mb             integer NOT NULL CHECK (ram_mb > 0),
    disk_gb            integer NOT NULL CHECK (disk_gb > 0),
    cpu_cores          integer NOT NULL CHECK (cpu_cores > 0),
    vm_type            text NOT NULL,
    status             text NOT NULL CHECK (status IN ('CREATING', 'STOPPED', 'STARTING', 'RUNNING',
                           'STOPPING', 'FAILED_TO_START', 'DESTROYED', 'UNKNOWN')),
    ip_address         text,
    ssh_port           integer,
    uptime_seconds     bigint,
    metadata           jsonb NOT NULL DEFAULT '{}',
    owner_user_id      bigint REFERENCES vmdesk.users(id),
    project_id         bigint REFERENCES vmdesk.projects(id),
    host_id            bigint NOT NULL REFERENCES vmdesk.hosts(id),
    provider_id        text,
    -- The live session holding the VM; kept by the triggers on sessions.
    live_session_id    bigint,
    -- The worker (desk process) creating the VM while it is CREATING.
    worker             text,
    start_after_create boolean NOT NULL DEFAULT true,
    last_stopped       timestamptz,
    started_at         timestamptz,
    billed_until       timestamptz,
    billing_milli      bigint NOT NULL DEFAULT 0,
    synced_at          timestamptz,
    synced_by          text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((owner_user_id IS NULL) <> (project_id IS NULL))
);
-- Allocation takes the least recently stopped free VM of a pool from these.
CREATE INDEX vms_free ON vmdesk.vms (project_id, last_stopped NULLS FIRST, id)
    WHERE live_session_id IS NULL AND status IN ('STOPPED', 'RUNNING');
CREATE INDEX vms_free_by_type ON vmdesk.vms (project_id, vm_type, last_stopped NULLS FIRST, id)
    WHERE live_session_id IS NULL AND status IN ('STOPPED', 'RUNNING');
CREATE INDEX vms_owner ON vmdesk.vms (owner_user_id);
CREATE INDEX vms_host_machine ON vmdesk.vms (host_id, provider_id);
CREATE INDEX vms_pending ON vmdesk.vms (status, worker) WHERE status = 'CREATING';

CREATE TABLE vmdesk.sessions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vm_id        bigint NOT NULL REFERENCES vmdesk.vms(id),
    user_id      bigint NOT NULL REFERENCES vmdesk.users(id),
    project_id   bigint NOT NULL REFERENCES vmdesk.projects(id),
    workspace_id bigint REFERENCES vmdesk.workspaces(id),
    status       text NOT NULL CHECK (status IN ('REQUESTED', 'STARTING', 'ACTIVE', 'TERMINATING',
                     'COMPLETED', 'TERMINATED', 'FAILED')),
    error        text,
    worker       text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    ended_at     timestamptz
);
-- The exclusivity rule itself: at most one live session per VM.
CREATE UNIQUE INDEX sessions_one_live_per_vm ON vmdesk.sessions (vm_id)
    WHERE status IN ('REQUESTED', 'STARTING', 'ACTIVE', 'TERMINATING');
CREATE INDEX sessions_user ON vmdesk.sessions (user_id, id);
CREATE INDEX sessions_pending ON vmdesk.sessions (status, worker)
    WHERE status IN ('REQUESTED', 'STARTING', 'TERMINATING');

CREATE FUNCTION vmdesk.sessions_hold_vm() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IN ('REQUESTED', 'STARTING', 'ACTIVE', 'TERMINATING') THEN
        UPDATE vmdesk.vms SET live_session_id = NEW.id WHERE id = NEW.vm_id;
    ELSE
        UPDATE vmdesk.vms SET live_session_id = NULL WHERE id = NEW.vm_id AND live_session_id = NEW.id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER sessions_hold_vm AFTER INSERT OR UPDATE OF status ON vmdesk.sessions
    FOR EACH ROW EXECUTE FUNCTION vmdesk.sessions_hold_vm();

CREATE TABLE vmdesk.ledger (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES vmdesk.users(id),
    amount     bigint NOT NULL CHECK (amount <> 0),
    kind       text NOT NULL CHECK (kind IN ('grant', 'vm_create', 'runtime', 'refund', 'adjustment')),
    reason     text NOT NULL,
    vm_id      bigint,
    session_id bigint,
    actor      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_user ON vmdesk.ledger (user_id, id);

-- The balance follows the ledger in the same statement; its CHECK refuses a
-- negative balance, so the check and the deduction are one atomic step.
CREATE FUNCTION vmdesk.ledger_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE vmdesk.users SET balance = balance + NEW.amount WHERE id = NEW.user_id;
    RETURN NULL;
END $$;
CREATE TRIGGER ledger_apply AFTER INSERT ON vmdesk.ledger
    FOR EACH ROW EXECUTE FUNCTION vmdesk.ledger_apply();
-- Append-only, for its owner too: no row is changed or removed, ever.
CREATE FUNCTION vmdesk.ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only' USING ERRCODE = 'VDL01';
END $$;
CREATE TRIGGER ledger_no_change BEFORE UPDATE OR DELETE ON vmdesk.ledger
    FOR EACH ROW EXECUTE FUNCTION vmdesk.ledger_append_only();
CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON vmdesk.ledger
    FOR EACH STATEMENT EXECUTE FUNCTION vmdesk.ledger_append_only();

CREATE TABLE vmdesk.events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type       text NOT NULL CHECK (type IN ('vm', 'session', 'billing', 'system', 'admin')),
    action     text NOT NULL,
    severity   text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    actor      text NOT NULL,
    vm_id      bigint,
    session_id bigint,
    -- The user the event is about (whose session, VM or credits), besides its actor.
    subject_id bigint,
    details    jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_actor ON vmdesk.events (actor, id);
CREATE INDEX events_subject ON vmdesk.events (subject_id, id);

-- Every change writes an event in its transaction; desks learn of it at
-- commit. The payload tells only that something changed and of which kind.
CREATE FUNCTION vmdesk.events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('vmdesk', json_build_object('id', NEW.id, 'type', NEW.type)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER events_notify AFTER INSERT ON vmdesk.events
    FOR EACH ROW EXECUTE FUNCTION vmdesk.events_notify();

-- Open consoles: a port of a desk's pool (each desk has its own 127.0.0.1,
-- so ports are keyed by desk), the VM it shows and who opened it.
CREATE TABLE vmdesk.consoles (
    desk          text NOT NULL,
    port          integer NOT NULL,
    vm_id         bigint NOT NULL REFERENCES vmdesk.vms(id),
    user_id       bigint NOT NULL REFERENCES vmdesk.users(id),
    worker        text NOT NULL,
    token_hash    text NOT NULL,
    token_expires timestamptz NOT NULL,
    token_used    boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (desk, port)
);

CREATE TABLE vmdesk.quarantine (
    host_id  bigint NOT NULL REFERENCES vmdesk.hosts(id),
    machine  text NOT NULL,
    found_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (host_id, machine)
);

-- Times as the embedded store writes them: RFC 3339, UTC, milliseconds.
CREATE FUNCTION vmdesk.ts(t timestamptz) RETURNS text LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;

-- Who calls: the login of the connection. Inside a SECURITY DEFINER function
-- current_user is the owner, so identity is always session_user.
CREATE FUNCTION vmdesk.is_admin() RETURNS boolean LANGUAGE sql STABLE
SET search_path = pg_catalog AS $$
    SELECT pg_has_role(session_user, @ADMINS_LIT@, 'MEMBER')
$$;
CREATE FUNCTION vmdesk.me() RETURNS bigint LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog AS $$
    SELECT id FROM vmdesk.users WHERE name = session_user
$$;

-- Reading: each user sees their own rows; pools, projects and hosts are
-- shared; an admin sees everything. Nobody but the owner writes a table.
GRANT SELECT ON vmdesk.settings, vmdesk.users, vmdesk.projects, vmdesk.workspaces, vmdesk.hosts,
    vmdesk.vms, vmdesk.sessions, vmdesk.ledger, vmdesk.events, vmdesk.consoles, vmdesk.quarantine
    TO @USERS@;
ALTER TABLE vmdesk.users ENABLE ROW LEVEL SECURITY;
ALTER TABLE vmdesk.vms ENABLE ROW LEVEL SECURITY;
ALTER TABLE vmdesk.sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE vmdesk.ledger ENABLE ROW LEVEL SECURITY;
ALTER TABLE vmdesk.events ENABLE ROW LEVEL SECURITY;
ALTER TABLE vmdesk.consoles ENABLE ROW LEVEL SECURITY;
ALTER TABLE vmdesk.quarantine ENABLE ROW LEVEL SECURITY;
CREATE POLICY own ON vmdesk.users FOR SELECT USING (name = session_user OR vmdesk.is_admin());
CREATE POLICY own ON vmdesk.vms FOR SELECT
    USING (project_id IS NOT NULL OR owner_user_id = vmdesk.me() OR vmdesk.is_admin());
CREATE POLICY own ON vmdesk.sessions FOR SELECT USING (user_id = vmdesk.me() OR vmdesk.is_admin());
CREATE POLICY own ON vmdesk.ledger FOR SELECT USING (user_id = vmdesk.me() OR vmdesk.is_admin());
CREATE POLICY own ON vmdesk.events FOR SELECT
    USING (actor = session_user OR subject_id = vmdesk.me() OR vmdesk.is_admin());
CREATE POLICY own ON vmdesk.consoles FOR SELECT USING (user_id = vmdesk.me() OR vmdesk.is_admin());
CREATE POLICY admin ON vmdesk.quarantine FOR SELECT USING (vmdesk.is_admin());
