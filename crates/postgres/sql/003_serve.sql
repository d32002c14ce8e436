-- vmdesk team store, step 3: what `vmdesk serve` (an admin's always-on
-- process) does for every desk: metered billing of running time.

-- Charges a VM's running time up to p_now to who uses it (its owner, or the
-- user of the pool VM's session), as crates/core's billing does on the
-- embedded store. The VM's row is locked and billed_until advanced in the
-- same transaction, so two passes (two serve processes, a leader that died
-- mid-pass) never charge one interval twice. p_observed caps the seconds at
-- what the caller's monotonic clock saw since its previous pass (NULL: no
-- cap). Returns NULL seconds when there was nothing to charge;
-- end_session/stop_vm say what is to happen at zero credits.
CREATE FUNCTION vmdesk.bill_vm(p_id bigint, p_now timestamptz, p_observed bigint,
    p_hourly_percent bigint, p_warn_seconds bigint,
    OUT vm text, OUT payer text, OUT seconds bigint, OUT credits bigint, OUT exhausted boolean,
    OUT end_session bigint, OUT stop_vm boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    v vmdesk.vms; f timestamptz; u timestamptz; wall bigint; uid bigint; sid bigint;
    hourly bigint; milli bigint; due bigint; bal bigint; taken bigint; remaining bigint; warned boolean;
BEGIN
    PERFORM vmdesk.require_admin('bill running time');
    SELECT * INTO v FROM vmdesk.vms WHERE id = p_id FOR UPDATE;
    IF NOT FOUND OR v.started_at IS NULL THEN
        RETURN;
    END IF;
    vm := v.name;
    exhausted := false;
    stop_vm := false;
    f := greatest(coalesce(v.billed_until, v.started_at), v.started_at);
    u := CASE WHEN v.status = 'RUNNING' THEN p_now ELSE coalesce(v.last_stopped, f) END;
    wall := floor(extract(epoch FROM u - f))::bigint;
    seconds := CASE
        -- The wall clock went back past the last charge: the VM still ran.
        WHEN p_observed IS NOT NULL AND wall < 0 AND v.status = 'RUNNING' THEN p_observed
        WHEN p_observed IS NOT NULL THEN least(wall, p_observed)
        ELSE wall END;
    IF seconds <= 0 THEN
        seconds := NULL;
        RETURN;
    END IF;
    IF v.owner_user_id IS NOT NULL THEN
        uid := v.owner_user_id;
    ELSE
        sid := coalesce(v.live_session_id, (SELECT id FROM vmdesk.sessions
            WHERE vm_id = p_id AND started_at IS NOT NULL ORDER BY id DESC LIMIT 1));
        IF sid IS NOT NULL THEN
            SELECT user_id INTO uid FROM vmdesk.sessions WHERE id = sid;
        END IF;
    END IF;
    IF uid IS NULL THEN
        -- A pool VM running with nobody's session is nobody's bill.
        UPDATE vmdesk.vms SET billed_until = u, billing_milli = 0 WHERE id = p_id;
        seconds := NULL;
        RETURN;
    END IF;
    SELECT name, balance INTO payer, bal FROM vmdesk.users WHERE id = uid FOR UPDATE;
    hourly := vmdesk.price(v.ram_mb, v.disk_gb, v.cpu_cores) * p_hourly_percent * 10;
    milli := v.billing_milli + seconds * hourly / 3600;
    due := milli / 1000;
    taken := least(due, bal);
    IF taken > 0 THEN
        INSERT INTO vmdesk.ledger (user_id, amount, kind, reason, vm_id, session_id, actor)
            VALUES (uid, -taken, 'runtime', seconds || ' s of running VM ' || v.name, p_id, sid, 'vmdesk');
        PERFORM vmdesk.record('billing', 'credits.runtime', 'info', 'vmdesk', p_id, NULL, uid,
            jsonb_build_object('user', payer, 'vm', v.name, 'seconds', seconds, 'amount', taken));
    END IF;
    credits := taken;
    UPDATE vmdesk.vms SET billed_until = u, billing_milli = milli - due * 1000 WHERE id = p_id;
    remaining := bal - taken;
    exhausted := due > bal OR (remaining = 0 AND v.status = 'RUNNING');
    IF exhausted THEN
        PERFORM vmdesk.record('billing', 'credits.exhausted', 'critical', 'vmdesk', p_id, NULL, uid,
            jsonb_build_object('user', payer, 'vm', v.name, 'due', due, 'taken', taken));
        IF sid IS NOT NULL AND v.live_session_id IS NOT NULL THEN
            end_session := sid;
        ELSIF v.status = 'RUNNING' THEN
            stop_vm := true;
        END IF;
    ELSIF v.status = 'RUNNING' AND hourly > 0 AND remaining * 3600000 / hourly < p_warn_seconds THEN
        SELECT EXISTS (SELECT 1 FROM vmdesk.events WHERE action = 'credits.low' AND subject_id = uid
            AND (details->>'at')::timestamptz > p_now - make_interval(secs => p_warn_seconds)) INTO warned;
        IF NOT warned THEN
            PERFORM vmdesk.record('billing', 'credits.low', 'warning', 'vmdesk', p_id, NULL, uid,
                jsonb_build_object('user', payer, 'balance', remaining, 'at', vmdesk.ts(p_now),
                    'seconds_left', remaining * 3600000 / hourly, 'vm', v.name));
        END IF;
    END IF;
END $$;

-- The VMs with running time to charge.
CREATE FUNCTION vmdesk.billable_vms() RETURNS SETOF bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    PERFORM vmdesk.require_admin('bill running time');
    RETURN QUERY SELECT id FROM vmdesk.vms WHERE started_at IS NOT NULL
        AND (status = 'RUNNING' OR last_stopped > coalesce(billed_until, started_at)) ORDER BY id;
END $$;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA vmdesk FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vmdesk.bill_vm(bigint, timestamptz, bigint, bigint, bigint), vmdesk.billable_vms()
    TO @USERS@;

-- VM actions (start, stop, restart, destroy) by the VM's owner or an admin,
-- in three steps around the desk's work on the host: begin (checked and, for
-- a stop or a destroy, marked STOPPING in one locked step, so that no
-- allocation takes the VM in between), done (the state the machine is in
-- now, and the event), or undo (the machine stays as it was).
CREATE FUNCTION vmdesk.vm_action_begin(p_id bigint, p_action text, p_force_off_at text) RETURNS vmdesk.vms
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; v vmdesk.vms; at text;
BEGIN
    a := vmdesk.caller();
    SELECT * INTO v FROM vmdesk.vms WHERE id = p_id FOR UPDATE;
    IF NOT FOUND OR NOT (v.project_id IS NOT NULL OR v.owner_user_id = a.id OR vmdesk.is_admin()) THEN
        RAISE EXCEPTION 'no VM named %', p_id USING ERRCODE = 'VDN01',
            DETAIL = json_build_object('vm', p_id::text)::text;
    END IF;
    IF v.owner_user_id IS DISTINCT FROM a.id AND NOT vmdesk.is_admin() THEN
        RAISE EXCEPTION '% may not act on VM %', a.name, v.name USING ERRCODE = '42501',
            DETAIL = json_build_object('forbidden', 'act on VM ' || v.name)::text;
    END IF;
    IF p_action NOT IN ('start', 'stop', 'restart', 'destroy') THEN
        RAISE EXCEPTION 'no VM action %', p_action USING ERRCODE = '22023';
    END IF;
    IF v.live_session_id IS NOT NULL AND p_action <> 'start' THEN
        RAISE EXCEPTION 'VM % is held by session %; close the session first', v.name, v.live_session_id
            USING ERRCODE = '22023';
    END IF;
    IF v.status IN ('CREATING', 'DESTROYED') THEN
        RAISE EXCEPTION 'VM % is % and cannot be acted on', v.name, v.status USING ERRCODE = '22023';
    END IF;
    IF v.status = 'STOPPING' THEN
        at := to_char((v.metadata->>'force_off_at')::timestamptz AT TIME ZONE 'UTC', 'HH24:MI:SS');
        RAISE EXCEPTION 'VM % is already stopping%; wait until it is stopped', v.name,
            coalesce(' and is forced off at ' || at || ' UTC if the guest does not shut down', '')
            USING ERRCODE = '22023', DETAIL = json_build_object('in_transition', true)::text;
    END IF;
    IF p_action = 'destroy' THEN
        UPDATE vmdesk.vms SET status = 'STOPPING', updated_at = now() WHERE id = p_id;
    ELSIF p_action IN ('stop', 'restart') AND v.status IN ('RUNNING', 'STARTING', 'UNKNOWN') THEN
        UPDATE vmdesk.vms SET status = 'STOPPING', updated_at = now(),
               metadata = metadata || jsonb_build_object('force_off_at', p_force_off_at)
         WHERE id = p_id;
    END IF;
    RETURN v;
END $$;

CREATE FUNCTION vmdesk.vm_action_done(p_id bigint, p_action text, p_was text, p_now text, p_forced boolean,
    p_system boolean)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; v vmdesk.vms;
BEGIN
    a := vmdesk.caller();
    SELECT * INTO v FROM vmdesk.vms WHERE id = p_id FOR UPDATE;
    IF NOT FOUND OR (v.owner_user_id IS DISTINCT FROM a.id AND NOT vmdesk.is_admin()) THEN
        RAISE EXCEPTION 'no VM named %', p_id USING ERRCODE = 'VDN01',
            DETAIL = json_build_object('vm', p_id::text)::text;
    END IF;
    UPDATE vmdesk.vms SET status = p_now, updated_at = now(),
           last_stopped = CASE WHEN p_now IN ('STOPPED', 'DESTROYED') THEN now() ELSE last_stopped END,
           started_at = CASE WHEN p_now = 'RUNNING' AND status <> 'RUNNING' THEN now() ELSE started_at END,
           metadata = metadata - 'force_off_at'
     WHERE id = p_id;
    -- p_system: the system itself acts (billing at zero credits), through an admin's process.
    PERFORM vmdesk.record(CASE WHEN v.owner_user_id IS DISTINCT FROM a.id THEN 'admin' ELSE 'vm' END,
        'vm.' || p_action, 'info', CASE WHEN p_system AND vmdesk.is_admin() THEN 'vmdesk' ELSE a.name END,
        v.id, NULL, v.owner_user_id,
        jsonb_build_object('vm', v.name, 'was', p_was, 'now', p_now, 'forced_off', p_forced));
END $$;

CREATE FUNCTION vmdesk.vm_action_undo(p_id bigint, p_was text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; v vmdesk.vms;
BEGIN
    a := vmdesk.caller();
    SELECT * INTO v FROM vmdesk.vms WHERE id = p_id FOR UPDATE;
    IF NOT FOUND OR (v.owner_user_id IS DISTINCT FROM a.id AND NOT vmdesk.is_admin()) THEN
        RETURN;
    END IF;
    UPDATE vmdesk.vms SET status = p_was, metadata = metadata - 'force_off_at'
     WHERE id = p_id AND status = 'STOPPING';
END $$;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA vmdesk FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vmdesk.vm_action_begin(bigint, text, text),
    vmdesk.vm_action_done(bigint, text, text, text, boolean, boolean), vmdesk.vm_action_undo(bigint, text)
    TO @USERS@;

-- Status sync: what a host said of a VM's machine (p_state: running, off,
-- between (starting or stopping: look again later), not_found, error),
-- written as crates/core's sync does on the embedded store. A VM in a
-- transition, or held by a session that is not ACTIVE, is left alone. A VM
-- seen off under an ACTIVE session ends it (TERMINATED).
CREATE FUNCTION vmdesk.vm_synced(p_id bigint, p_state text, p_error text, p_source text,
    OUT vm text, OUT was text, OUT now_status text, OUT terminated_session bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE v vmdesk.vms; s vmdesk.sessions; reason text; ends boolean;
BEGIN
    PERFORM vmdesk.require_admin('reconcile VMs with their hosts');
    SELECT * INTO v FROM vmdesk.vms WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF v.live_session_id IS NOT NULL THEN
        SELECT * INTO s FROM vmdesk.sessions WHERE id = v.live_session_id FOR UPDATE;
    END IF;
    -- The host answered: remember when, and what asked.
    IF p_state <> 'error' THEN
        UPDATE vmdesk.vms SET synced_at = now(), synced_by = p_source WHERE id = p_id;
    END IF;
    IF v.worker IS NOT NULL OR v.status IN ('CREATING', 'STARTING', 'STOPPING', 'DESTROYED')
       OR (s.id IS NOT NULL AND s.status <> 'ACTIVE') THEN
        RETURN;
    END IF;
    IF p_state = 'running' THEN
        now_status := 'RUNNING';
    ELSIF p_state = 'off' THEN
        now_status := 'STOPPED';
    ELSIF p_state = 'not_found' THEN
        now_status := 'UNKNOWN';
        reason := 'the host no longer knows this VM';
    ELSIF p_state = 'error' THEN
        now_status := 'UNKNOWN';
        reason := 'the host cannot be reached';
    ELSE
        RETURN;
    END IF;
    ends := now_status = 'STOPPED' AND s.id IS NOT NULL;
    IF now_status = v.status AND NOT ends THEN
        now_status := NULL;
        RETURN;
    END IF;
    UPDATE vmdesk.vms SET status = now_status, updated_at = now(),
           last_stopped = CASE WHEN now_status = 'STOPPED' THEN now() ELSE last_stopped END,
           started_at = CASE WHEN now_status = 'RUNNING' AND v.status <> 'RUNNING' THEN now() ELSE started_at END
     WHERE id = p_id;
    PERFORM vmdesk.record('vm', 'sync.status', CASE WHEN now_status = 'UNKNOWN' THEN 'warning' ELSE 'info' END,
        'vmdesk', p_id, NULL, v.owner_user_id,
        jsonb_build_object('vm', v.name, 'was', v.status, 'now', now_status, 'source', p_source,
            'reason', reason, 'error', p_error));
    IF ends THEN
        UPDATE vmdesk.sessions SET status = 'TERMINATED', worker = NULL, updated_at = now(), ended_at = now(),
               error = 'the VM stopped under the session'
         WHERE id = s.id AND status = 'ACTIVE';
        PERFORM vmdesk.record('session', 'session.terminated', 'warning', 'vmdesk', p_id, s.id, s.user_id,
            jsonb_build_object('was', 'ACTIVE', 'now', 'TERMINATED',
                'user', (SELECT name FROM vmdesk.users WHERE id = s.user_id),
                'reason', 'the VM stopped under the session', 'source', p_source));
        terminated_session := s.id;
    END IF;
    vm := v.name;
    was := v.status;
END $$;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA vmdesk FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vmdesk.vm_synced(bigint, text, text, text) TO @USERS@;

-- What the system tells of itself, through an admin's process: a serve that
-- leads or stops (its login as actor), a clock that jumped under billing
-- (the system as actor, as on the embedded store).
CREATE FUNCTION vmdesk.system_note(p_action text, p_severity text, p_details jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users;
BEGIN
    a := vmdesk.require_admin('write system events');
    IF p_action NOT IN ('serve.lead', 'serve.stop', 'clock.jump') THEN
        RAISE EXCEPTION 'no system note %', p_action USING ERRCODE = '22023';
    END IF;
    IF p_severity NOT IN ('info', 'warning', 'critical') THEN
        RAISE EXCEPTION 'no severity %', p_severity USING ERRCODE = '22023';
    END IF;
    PERFORM vmdesk.record('system', p_action, p_severity,
        CASE WHEN p_action = 'clock.jump' THEN 'vmdesk' ELSE a.name END, NULL, NULL, NULL, p_details);
END $$;

-- A refused or failed action of the caller's own, as a warning event with
-- its reason (as the embedded store writes them).
CREATE FUNCTION vmdesk.note_failure(p_action text, p_vm bigint, p_details jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; v vmdesk.vms;
BEGIN
    a := vmdesk.caller();
    IF p_action !~ '^vm\.(create\.refused|(start|stop|restart|destroy)\.failed)$' THEN
        RAISE EXCEPTION 'no failure event %', p_action USING ERRCODE = '22023';
    END IF;
    IF p_vm IS NOT NULL THEN
        SELECT * INTO v FROM vmdesk.vms WHERE id = p_vm;
        IF NOT FOUND OR NOT (v.project_id IS NOT NULL OR coalesce(v.owner_user_id = a.id, false)
                             OR vmdesk.is_admin()) THEN
            p_vm := NULL;
        END IF;
    END IF;
    PERFORM vmdesk.record('vm', p_action, 'warning', a.name, p_vm, NULL, a.id, p_details);
END $$;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA vmdesk FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vmdesk.system_note(text, text, jsonb), vmdesk.note_failure(text, bigint, jsonb)
    TO @USERS@;

-- Pending and crashed work. A desk's worker (one per vmdesk process) holds
-- the session-level advisory lock (7283462, hashtext(worker id)) on its
-- connection while it lives; the server drops it when the connection ends,
-- a crash included. So any admin (serve) can tell a live worker from a
-- dead one, on any machine.
CREATE FUNCTION vmdesk.worker_alive(p_worker text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF pg_try_advisory_lock(7283462, hashtext(p_worker)) THEN
        PERFORM pg_advisory_unlock(7283462, hashtext(p_worker));
        RETURN false;
    END IF;
    RETURN true;
END $$;

-- The oldest creation or session waiting for a worker that nobody drives,
-- claimed for p_worker (admin: serve drives what desks left to a worker).
CREATE FUNCTION vmdesk.claim_pending(p_worker text, OUT o_kind text, OUT o_id bigint, OUT o_status text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    PERFORM vmdesk.require_admin('drive pending work');
    SELECT v.id INTO o_id FROM vmdesk.vms v WHERE v.status = 'CREATING' AND v.worker IS NULL
        ORDER BY v.id LIMIT 1 FOR UPDATE SKIP LOCKED;
    IF FOUND THEN
        UPDATE vmdesk.vms SET worker = p_worker WHERE id = o_id;
        o_kind := 'vm';
        o_status := 'CREATING';
        RETURN;
    END IF;
    SELECT s.id, s.status INTO o_id, o_status FROM vmdesk.sessions s
     WHERE s.status IN ('REQUESTED', 'TERMINATING') AND s.worker IS NULL
     ORDER BY s.id LIMIT 1 FOR UPDATE SKIP LOCKED;
    IF FOUND THEN
        UPDATE vmdesk.sessions SET worker = p_worker WHERE id = o_id;
        o_kind := 'session';
    END IF;
END $$;

-- Work a worker has claimed and not finished (admin).
CREATE FUNCTION vmdesk.claimed_work() RETURNS TABLE (o_kind text, o_id bigint, o_worker text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    PERFORM vmdesk.require_admin('run recovery');
    RETURN QUERY
        SELECT 'vm'::text, v.id, v.worker FROM vmdesk.vms v WHERE v.status = 'CREATING' AND v.worker IS NOT NULL
        UNION ALL
        SELECT 'session'::text, s.id, s.worker FROM vmdesk.sessions s
         WHERE s.status IN ('REQUESTED', 'STARTING', 'TERMINATING') AND s.worker IS NOT NULL
        ORDER BY 2;
END $$;

-- Takes over the work of a dead worker, for p_me; whether it did (one
-- process settles it).
CREATE FUNCTION vmdesk.reclaim(p_kind text, p_id bigint, p_dead text, p_me text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    PERFORM vmdesk.require_admin('run recovery');
    IF vmdesk.worker_alive(p_dead) THEN
        RETURN false;
    END IF;
    IF p_kind = 'vm' THEN
        UPDATE vmdesk.vms SET worker = p_me WHERE id = p_id AND status = 'CREATING' AND worker = p_dead;
    ELSE
        UPDATE vmdesk.sessions SET worker = p_me WHERE id = p_id AND worker = p_dead;
    END IF;
    RETURN FOUND;
END $$;

-- A creation whose creator died: FAILED_TO_START (its machine was powered
-- off by the caller; its disk and definition stay for vm start or destroy).
CREATE FUNCTION vmdesk.recovered_vm(p_id bigint, p_me text, p_dead text, p_machine text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    PERFORM vmdesk.require_admin('run recovery');
    UPDATE vmdesk.vms SET status = 'FAILED_TO_START', worker = NULL, updated_at = now()
     WHERE id = p_id AND status = 'CREATING' AND worker = p_me;
    IF FOUND THEN
        PERFORM vmdesk.record('system', 'recovery.vm', 'warning', 'vmdesk', p_id, NULL,
            (SELECT owner_user_id FROM vmdesk.vms WHERE id = p_id),
            jsonb_build_object('was', 'CREATING', 'now', 'FAILED_TO_START',
                'reason', 'its creator stopped before it finished', 'worker', p_dead, 'machine', p_machine));
    END IF;
END $$;

-- A session whose worker died: one being started is ACTIVE if its VM runs
-- (p_vm_status RUNNING), else FAILED; one being closed only gets its event
-- (the caller drives the shutdown on).
CREATE FUNCTION vmdesk.recovered_session(p_id bigint, p_me text, p_dead text, p_vm_status text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE s vmdesk.sessions; now_status text;
BEGIN
    PERFORM vmdesk.require_admin('run recovery');
    SELECT * INTO s FROM vmdesk.sessions WHERE id = p_id AND worker = p_me FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF s.status = 'TERMINATING' THEN
        PERFORM vmdesk.record('system', 'recovery.session', 'warning', 'vmdesk', s.vm_id, s.id, s.user_id,
            jsonb_build_object('was', s.status, 'worker', p_dead,
                'reason', 'its worker stopped before it finished'));
        RETURN;
    END IF;
    now_status := CASE WHEN p_vm_status = 'RUNNING' THEN 'ACTIVE' ELSE 'FAILED' END;
    UPDATE vmdesk.sessions SET status = now_status, worker = NULL, updated_at = now(),
           started_at = CASE WHEN now_status = 'ACTIVE' THEN now() ELSE started_at END,
           ended_at = CASE WHEN now_status = 'FAILED' THEN now() ELSE ended_at END,
           error = CASE WHEN now_status = 'FAILED' THEN 'its worker stopped before the VM was started' ELSE error END
     WHERE id = p_id;
    UPDATE vmdesk.vms SET status = p_vm_status, updated_at = now(),
           last_stopped = CASE WHEN p_vm_status = 'STOPPED' THEN now() ELSE last_stopped END,
           started_at = CASE WHEN p_vm_status = 'RUNNING' AND status <> 'RUNNING' THEN now() ELSE started_at END
     WHERE id = s.vm_id;
    PERFORM vmdesk.record('system', 'recovery.session', 'warning', 'vmdesk', s.vm_id, s.id, s.user_id,
        jsonb_build_object('was', s.status, 'now', now_status, 'vm_status', p_vm_status, 'worker', p_dead,
            'reason', 'its worker stopped before it finished'));
END $$;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA vmdesk FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vmdesk.worker_alive(text), vmdesk.claim_pending(text), vmdesk.claimed_work(),
    vmdesk.reclaim(text, bigint, text, text), vmdesk.recovered_vm(bigint, text, text, text),
    vmdesk.recovered_session(bigint, text, text, text)
    TO @USERS@;

-- Consoles. A console's port is one of its desk's own pool (each desk has
-- its own 127.0.0.1): ports are keyed by desk. Who may open one: an admin,
-- the VM's owner, or the user of its ACTIVE session; the VM must run.
CREATE FUNCTION vmdesk.may_show(p_user vmdesk.users, v vmdesk.vms, p_asked text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    -- coalesce: a pool VM has no owner, and NULL must not let anyone in.
    IF NOT (pg_has_role(p_user.name, @ADMINS_LIT@, 'MEMBER')
            OR coalesce(v.owner_user_id = p_user.id, false)
            OR EXISTS (SELECT 1 FROM vmdesk.sessions s
                       WHERE s.vm_id = v.id AND s.user_id = p_user.id AND s.status = 'ACTIVE')) THEN
        IF v.project_id IS NOT NULL OR v.owner_user_id IS NULL THEN
            RAISE EXCEPTION '% may not open the console of VM % without a session on it', p_user.name, v.name
                USING ERRCODE = '42501',
                DETAIL = json_build_object('forbidden',
                    'open the console of VM "' || v.name || '" without a session on it')::text;
        END IF;
        RAISE EXCEPTION 'no VM named %', p_asked USING ERRCODE = 'VDN01',
            DETAIL = json_build_object('vm', p_asked)::text;
    END IF;
    IF v.status <> 'RUNNING' THEN
        RAISE EXCEPTION 'VM "%" is %, not RUNNING', v.name, v.status USING ERRCODE = 'VDC01',
            DETAIL = json_build_object('unavailable', format('VM "%s" is %s, not RUNNING', v.name, v.status))::text;
    END IF;
END $$;

CREATE FUNCTION vmdesk.console_reserve(p_desk text, p_vm text, p_start int, p_end int, p_skip int[],
    p_worker text, p_token_hash text, p_expires timestamptz)
RETURNS TABLE (o_port int, o_vm_id bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; v vmdesk.vms; port int;
BEGIN
    a := vmdesk.caller();
    SELECT * INTO v FROM vmdesk.vms WHERE (id::text = p_vm OR name = p_vm) AND status <> 'DESTROYED'
        ORDER BY (id::text = p_vm) DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no VM named %', p_vm USING ERRCODE = 'VDN01',
            DETAIL = json_build_object('vm', p_vm)::text;
    END IF;
    PERFORM vmdesk.may_show(a, v, p_vm);
    -- One desk's reservations at a time (its pool is its own).
    PERFORM pg_advisory_xact_lock(7283463, hashtext(p_desk));
    SELECT p INTO port FROM generate_series(p_start, p_end) AS p
     WHERE p NOT IN (SELECT c.port FROM vmdesk.consoles c WHERE c.desk = p_desk)
       AND p <> ALL (coalesce(p_skip, '{}'))
     ORDER BY p LIMIT 1;
    IF port IS NULL THEN
        RAISE EXCEPTION 'the console port pool %-% is exhausted', p_start, p_end USING ERRCODE = 'VDC03',
            DETAIL = json_build_object('start', p_start, 'end', p_end, 'total', p_end - p_start + 1)::text;
    END IF;
    INSERT INTO vmdesk.consoles (desk, port, vm_id, user_id, worker, token_hash, token_expires)
        VALUES (p_desk, port, v.id, a.id, p_worker, p_token_hash, p_expires);
    PERFORM vmdesk.record('vm', 'console.open', 'info', a.name, v.id, NULL, a.id,
        jsonb_build_object('vm', v.name, 'port', port));
    o_port := port;
    o_vm_id := v.id;
    RETURN NEXT;
END $$;

-- Spends a console's token (the one issued, unused, not expired), then
-- checks again that its opener may see the VM and that it runs; if not, the
-- console is closed and the error says why.
CREATE FUNCTION vmdesk.console_redeem(p_desk text, p_port int, p_token_hash text,
    OUT o_vm_id bigint, OUT o_error text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE c vmdesk.consoles; v vmdesk.vms; u vmdesk.users; why text;
BEGIN
    PERFORM vmdesk.caller();
    SELECT * INTO c FROM vmdesk.consoles WHERE desk = p_desk AND port = p_port FOR UPDATE;
    IF NOT FOUND THEN
        why := format('no console is open on port %s', p_port);
    ELSIF c.user_id <> vmdesk.me() THEN
        -- The desk's process serves its own user's consoles only.
        why := 'the console is another user''s';
    ELSIF p_token_hash IS NULL OR p_token_hash = '' THEN
        why := 'no token was given';
    ELSIF c.token_hash <> p_token_hash THEN
        why := 'the token is wrong';
    ELSIF c.token_used THEN
        why := 'the token was already used';
    ELSIF c.token_expires <= now() THEN
        why := 'the token has expired';
    END IF;
    IF why IS NOT NULL THEN
        RAISE EXCEPTION 'the console refused the connection: %', why USING ERRCODE = 'VDC02',
            DETAIL = json_build_object('refused', why)::text;
    END IF;
    UPDATE vmdesk.consoles SET token_used = true WHERE desk = p_desk AND port = p_port;
    SELECT * INTO v FROM vmdesk.vms WHERE id = c.vm_id;
    SELECT * INTO u FROM vmdesk.users WHERE id = c.user_id;
    o_vm_id := v.id;
    BEGIN
        PERFORM vmdesk.may_show(u, v, v.name);
    EXCEPTION WHEN OTHERS THEN
        -- No longer: the console closes, and the caller is told why.
        o_error := SQLERRM;
        DELETE FROM vmdesk.consoles WHERE desk = p_desk AND port = p_port;
        PERFORM vmdesk.record('vm', 'console.close', 'info', 'vmdesk', v.id, NULL, u.id,
            jsonb_build_object('port', p_port, 'reason', o_error));
    END;
END $$;

CREATE FUNCTION vmdesk.console_release(p_desk text, p_port int, p_reason text, p_recovery boolean)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE c vmdesk.consoles;
BEGIN
    PERFORM vmdesk.caller();
    DELETE FROM vmdesk.consoles WHERE desk = p_desk AND port = p_port
        AND (user_id = vmdesk.me() OR vmdesk.is_admin()) RETURNING * INTO c;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    -- p_recovery: freed because the process serving it is gone.
    PERFORM vmdesk.record(CASE WHEN p_recovery THEN 'system' ELSE 'vm' END,
        CASE WHEN p_recovery THEN 'recovery.console' ELSE 'console.close' END, 'info', 'vmdesk',
        c.vm_id, NULL, c.user_id, jsonb_build_object('port', p_port, 'reason', p_reason));
    RETURN true;
END $$;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA vmdesk FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vmdesk.console_reserve(text, text, int, int, int[], text, text, timestamptz),
    vmdesk.console_redeem(text, int, text), vmdesk.console_release(text, int, text, boolean)
    TO @USERS@;

-- The key of the advisory lock the leading serve holds: a random number
-- only admins can read. Advisory locks are anyone's to take, so a known key
-- would let any login hold the lead and stop sync and billing for all.
CREATE TABLE vmdesk.secrets (
    key   text PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO vmdesk.secrets (key, value) VALUES ('serve_lock', (random() * 9.2e18)::bigint);

CREATE FUNCTION vmdesk.serve_lock_key() RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE k bigint;
BEGIN
    PERFORM vmdesk.require_admin('run vmdesk serve');
    SELECT value INTO k FROM vmdesk.secrets WHERE key = 'serve_lock';
    RETURN k;
END $$;

-- Which serve leads now, if any: its host, pid and since when (from its
-- serve.lead event), while its advisory lock is held. Any user may ask: a
-- desk tells its user when nobody follows the hosts or bills.
CREATE FUNCTION vmdesk.serve_leader(OUT o_host text, OUT o_pid int, OUT o_since text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE k bigint;
BEGIN
    PERFORM vmdesk.caller();
    SELECT value INTO k FROM vmdesk.secrets WHERE key = 'serve_lock';
    -- A bigint key shows in pg_locks as its high and low halves.
    IF NOT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                   WHERE l.locktype = 'advisory' AND d.datname = current_database()
                     AND l.classid = ((k >> 32) & 4294967295)::oid
                     AND l.objid = (k & 4294967295)::oid AND l.objsubid = 1 AND l.granted) THEN
        RETURN;
    END IF;
    SELECT details->>'host', (details->>'pid')::int, vmdesk.ts(created_at)
      INTO o_host, o_pid, o_since
      FROM vmdesk.events WHERE action = 'serve.lead' ORDER BY id DESC LIMIT 1;
END $$;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA vmdesk FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vmdesk.serve_lock_key() TO @USERS@;
GRANT EXECUTE ON FUNCTION vmdesk.serve_leader() TO @USERS@;
