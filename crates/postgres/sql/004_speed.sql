-- vmdesk team store, step 4: allocation at team scale.
--
-- 1. A session's user, project and workspace are checked by the functions
--    that insert sessions (session_open, the migration), and users, projects
--    and workspaces are never deleted. Their foreign keys made every
--    allocation take a KEY SHARE lock on the user's and the project's row,
--    which concurrent allocations turn into multixacts: gone. The VM's key
--    stays (its row is locked by the allocation itself anyway).
-- 2. NOTIFY at commit takes a lock that serialises every notifying
--    transaction's commit, WAL flush included, so no two allocations commit
--    together. A desk sets vmdesk.notify = 'after_commit' on its connection
--    and sends one (coalesced) NOTIFY of its own after its writes commit;
--    everyone else (psql, other clients) still notifies at commit.
-- 3. session_open opens the session, holds its VM and writes the event in
--    one statement, with no trigger and no nested function call.

ALTER TABLE vmdesk.sessions
    DROP CONSTRAINT sessions_user_id_fkey,
    DROP CONSTRAINT sessions_project_id_fkey,
    DROP CONSTRAINT sessions_workspace_id_fkey;

-- The trigger fires only for connections that did not take the notifying
-- on themselves (its WHEN spares them the call).
DROP TRIGGER events_notify ON vmdesk.events;
CREATE TRIGGER events_notify AFTER INSERT ON vmdesk.events FOR EACH ROW
    WHEN (current_setting('vmdesk.notify', true) IS DISTINCT FROM 'after_commit')
    EXECUTE FUNCTION vmdesk.events_notify();

-- A session's insert holds its VM in the statement that opens it (below);
-- the trigger follows later changes of status.
DROP TRIGGER sessions_hold_vm ON vmdesk.sessions;
CREATE TRIGGER sessions_hold_vm AFTER UPDATE OF status ON vmdesk.sessions
    FOR EACH ROW EXECUTE FUNCTION vmdesk.sessions_hold_vm();

CREATE OR REPLACE FUNCTION vmdesk.session_open(p_project text, p_workspace text, p_vm_type text, p_worker text)
RETURNS vmdesk.sessions
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog
-- Its statements are planned once per connection, not at every call.
SET plan_cache_mode = force_generic_plan AS $$
DECLARE uid bigint; uname text; pid bigint; wid bigint; s vmdesk.sessions;
    total bigint; of_type bigint; busy bigint; ready bigint;
BEGIN
    SELECT u.id, u.name, p.id INTO uid, uname, pid
      FROM vmdesk.users u LEFT JOIN vmdesk.projects p ON p.name = p_project
     WHERE u.name = session_user;
    IF uid IS NULL THEN
        RAISE EXCEPTION 'the login % is not a user of this vmdesk store', session_user
            USING ERRCODE = '42501';
    END IF;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'no project named %', p_project USING ERRCODE = 'VDN01',
            DETAIL = json_build_object('project', p_project)::text;
    END IF;
    IF p_workspace IS NOT NULL THEN
        SELECT id INTO wid FROM vmdesk.workspaces WHERE project_id = pid AND name = p_workspace;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'project % has no workspace named %', p_project, p_workspace USING ERRCODE = 'VDN01',
                DETAIL = json_build_object('project', p_project, 'workspace', p_workspace)::text;
        END IF;
    END IF;
    -- One statement: take the least recently stopped free VM nobody else is
    -- taking, open the session on it and write its event.
    WITH pick AS (
        SELECT v.id FROM vmdesk.vms v
        WHERE v.project_id = pid AND (p_vm_type IS NULL OR v.vm_type = p_vm_type)
          AND v.live_session_id IS NULL AND v.status IN ('STOPPED', 'RUNNING')
        ORDER BY v.last_stopped NULLS FIRST, v.id
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    ), opened AS (
        INSERT INTO vmdesk.sessions (vm_id, user_id, project_id, workspace_id, status, worker)
            SELECT pick.id, uid, pid, wid, 'REQUESTED', p_worker FROM pick
            RETURNING *
    ), held AS (
        UPDATE vmdesk.vms v SET live_session_id = o.id FROM opened o WHERE v.id = o.vm_id
    ), recorded AS (
        INSERT INTO vmdesk.events (type, action, severity, actor, vm_id, session_id, subject_id, details)
            SELECT 'session', 'session.open', 'info', uname, o.vm_id, o.id, uid,
                   jsonb_build_object('project', p_project, 'workspace', p_workspace, 'vm_type', p_vm_type,
                                      'status', 'REQUESTED')
            FROM opened o
    )
    SELECT * INTO s FROM opened;
    IF s.id IS NULL THEN
        SELECT count(*),
               count(*) FILTER (WHERE p_vm_type IS NULL OR vm_type = p_vm_type),
               count(*) FILTER (WHERE (p_vm_type IS NULL OR vm_type = p_vm_type) AND live_session_id IS NOT NULL),
               count(*) FILTER (WHERE (p_vm_type IS NULL OR vm_type = p_vm_type) AND live_session_id IS NULL
                                AND status IN ('STOPPED', 'RUNNING'))
          INTO total, of_type, busy, ready
          FROM vmdesk.vms WHERE project_id = pid;
        IF total = 0 THEN
            RAISE EXCEPTION 'project % has no VMs in its pool', p_project USING ERRCODE = 'VDA01',
                DETAIL = json_build_object('project', p_project)::text;
        ELSIF p_vm_type IS NOT NULL AND of_type = 0 THEN
            RAISE EXCEPTION 'project % has no VM of type %', p_project, p_vm_type USING ERRCODE = 'VDA02',
                DETAIL = json_build_object('project', p_project, 'vm_type', p_vm_type)::text;
        ELSIF busy >= of_type OR ready > 0 THEN
            -- ready > 0: free VMs that others were taking at this very moment.
            RAISE EXCEPTION 'all % VMs of project % are in use', of_type, p_project USING ERRCODE = 'VDA03',
                DETAIL = json_build_object('project', p_project, 'total', of_type)::text;
        ELSE
            RAISE EXCEPTION 'no VM of project % is ready: % in use, % neither stopped nor running',
                p_project, busy, of_type - busy - ready USING ERRCODE = 'VDA04',
                DETAIL = json_build_object('project', p_project, 'busy', busy, 'not_ready', of_type - busy - ready)::text;
        END IF;
    END IF;
    RETURN s;
END $$;

-- 4. Helpers called for every row a desk reads, inlined by the planner now.
--    Their SET clause kept them out of line: vmdesk.ts was parsed and planned
--    at each of its call sites in every statement, a tenth of an
--    allocation's CPU. Every name in them is schema-qualified, so no
--    search_path can redirect them. (to_char is stable, not immutable, and
--    an immutable SQL function is inlined only over immutable calls.)
CREATE OR REPLACE FUNCTION vmdesk.ts(t timestamptz) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;
CREATE OR REPLACE FUNCTION vmdesk.is_admin() RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.pg_has_role(session_user, @ADMINS_LIT@, 'MEMBER')
$$;
