-- vmdesk team store, step 5: what admins did only on the embedded store
-- (host import, the quarantine of unknown machines, VM metadata), and worker
-- liveness that no other login can fake.

-- 1. Workers. A desk's worker used to hold the advisory lock
--    (7283462, hashtext(worker id)): any login knowing the id (it is in the
--    session rows) could take that lock, so that a dead desk's work looked
--    alive and was never recovered. Now a worker registers and gets a random
--    key that only it and the owner know, and holds the lock of that key.
CREATE TABLE vmdesk.workers (
    worker        text PRIMARY KEY,
    user_id       bigint NOT NULL REFERENCES vmdesk.users(id),
    lock_key      bigint NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now()
);
-- Nobody but the owner reads it: the keys are the point.
ALTER TABLE vmdesk.workers ENABLE ROW LEVEL SECURITY;

-- Registers the caller's worker (again after a reconnection) and returns
-- the key of the advisory lock it holds while it lives. A worker id is its
-- first registrant's.
CREATE FUNCTION vmdesk.worker_register(p_worker text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; w vmdesk.workers;
BEGIN
    a := vmdesk.caller();
    IF p_worker IS NULL OR length(p_worker) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'a worker id is 1 to 200 characters' USING ERRCODE = '22023';
    END IF;
    INSERT INTO vmdesk.workers (worker, user_id, lock_key)
    -- 64 bits of gen_random_uuid (a strong random source), less its
    -- version nibble.
    VALUES (p_worker, a.id,
            ('x' || substr(replace(gen_random_uuid()::text, '-', ''), 1, 16))::bit(64)::bigint)
    ON CONFLICT (worker) DO NOTHING;
    SELECT * INTO w FROM vmdesk.workers WHERE worker = p_worker;
    IF w.user_id <> a.id THEN
        RAISE EXCEPTION '% may not register worker %: it is another user''s', a.name, p_worker
            USING ERRCODE = '42501',
            DETAIL = json_build_object('forbidden', 'register another user''s worker')::text;
    END IF;
    -- The caller's registrations whose process is gone are forgotten (an
    -- unknown worker is a dead one anyway), so the table does not grow with
    -- every start of every desk.
    DELETE FROM vmdesk.workers o
     WHERE o.user_id = a.id AND o.worker <> p_worker
       AND NOT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                       WHERE l.locktype = 'advisory' AND d.datname = current_database()
                         AND l.classid = ((o.lock_key >> 32) & 4294967295)::oid
                         AND l.objid = (o.lock_key & 4294967295)::oid AND l.objsubid = 1 AND l.granted);
    RETURN w.lock_key;
END $$;

-- Whether a worker's process lives: its lock is held. An unknown worker is
-- not alive.
CREATE OR REPLACE FUNCTION vmdesk.worker_alive(p_worker text) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE k bigint;
BEGIN
    PERFORM vmdesk.caller();
    SELECT lock_key INTO k FROM vmdesk.workers WHERE worker = p_worker;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    -- A bigint key shows in pg_locks as its high and low halves.
    RETURN EXISTS (SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                   WHERE l.locktype = 'advisory' AND d.datname = current_database()
                     AND l.classid = ((k >> 32) & 4294967295)::oid
                     AND l.objid = (k & 4294967295)::oid AND l.objsubid = 1 AND l.granted);
END $$;

-- 2. Host import (admin): adopts a host's machines as VMs of a pool. The
--    desk read the host's inventory; per machine it sends the names it may
--    take (valid ones, best first), the type, size and state. Known machines
--    are passed over; a machine with no free name is skipped with why.
CREATE FUNCTION vmdesk.vm_import(p_host text, p_pool text, p_machines jsonb)
RETURNS TABLE (machine text, vm_id bigint, skipped text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; hid bigint; pid bigint; m jsonb; chosen text; c text; new_id bigint;
BEGIN
    a := vmdesk.require_admin('import VMs');
    SELECT id INTO hid FROM vmdesk.hosts WHERE name = p_host;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no host named %', p_host USING ERRCODE = 'VDN01',
            DETAIL = json_build_object('host', p_host)::text;
    END IF;
    SELECT id INTO pid FROM vmdesk.projects WHERE name = p_pool;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no project named %', p_pool USING ERRCODE = 'VDN01',
            DETAIL = json_build_object('project', p_pool)::text;
    END IF;
    IF jsonb_typeof(p_machines) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'the machines are a JSON array' USING ERRCODE = '22023';
    END IF;
    FOR m IN SELECT * FROM jsonb_array_elements(p_machines) LOOP
        machine := m->>'machine';
        IF machine IS NULL OR m->>'status' NOT IN ('STOPPED', 'RUNNING', 'UNKNOWN') THEN
            RAISE EXCEPTION 'a machine is named and STOPPED, RUNNING or UNKNOWN' USING ERRCODE = '22023';
        END IF;
        IF EXISTS (SELECT 1 FROM vmdesk.vms v WHERE v.host_id = hid AND v.provider_id = machine
                   AND v.status <> 'DESTROYED') THEN
            CONTINUE;
        END IF;
        chosen := NULL;
        FOR c IN SELECT jsonb_array_elements_text(coalesce(m->'names', '[]')) LOOP
            IF NOT EXISTS (SELECT 1 FROM vmdesk.vms v WHERE v.name = c) THEN
                PERFORM vmdesk.check_name('VM', c);
                chosen := c;
                EXIT;
            END IF;
        END LOOP;
        IF chosen IS NULL OR m->>'vm_type' IS NULL THEN
            vm_id := NULL;
            skipped := format('no free, valid vmdesk name or type for %s (%s)', to_json(m->>'name'), m->>'size');
            RETURN NEXT;
            CONTINUE;
        END IF;
        PERFORM vmdesk.check_name('VM type', m->>'vm_type');
        INSERT INTO vmdesk.vms (name, os_type, ram_mb, disk_gb, cpu_cores, vm_type, status, project_id,
                                host_id, provider_id)
        VALUES (chosen, m->>'os_type', (m->>'ram_mb')::int, (m->>'disk_gb')::int, (m->>'cpu_cores')::int,
                m->>'vm_type', m->>'status', pid, hid, machine)
        RETURNING id INTO new_id;
        PERFORM vmdesk.record('admin', 'vm.import', 'info', a.name, new_id, NULL, NULL,
            jsonb_build_object('vm', chosen, 'host', p_host, 'machine', machine, 'size', m->>'size',
                               'pool', p_pool, 'status', m->>'status'));
        vm_id := new_id;
        skipped := NULL;
        RETURN NEXT;
    END LOOP;
END $$;

-- 3. The quarantine (admin; `vmdesk serve` and `vmdesk recover`): machines
--    on a host with the store's mark but no VM row, stopped and kept until
--    purged.
--
-- What the store knows of a machine on a host: a live VM row, and whether
-- it is quarantined.
CREATE FUNCTION vmdesk.machine_known(p_host text, p_machine text, OUT o_has_row boolean, OUT o_quarantined boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE hid bigint;
BEGIN
    PERFORM vmdesk.require_admin('run recovery');
    SELECT id INTO hid FROM vmdesk.hosts WHERE name = p_host;
    o_has_row := EXISTS (SELECT 1 FROM vmdesk.vms WHERE host_id = hid AND provider_id = p_machine
                         AND status <> 'DESTROYED');
    o_quarantined := EXISTS (SELECT 1 FROM vmdesk.quarantine WHERE host_id = hid AND machine = p_machine);
END $$;

-- Quarantines a machine (it was powered off, or that failed: p_powered_off);
-- false if it has a row or was quarantined already. One event each.
CREATE FUNCTION vmdesk.quarantine_add(p_host text, p_machine text, p_powered_off boolean) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE hid bigint;
BEGIN
    PERFORM vmdesk.require_admin('run recovery');
    SELECT id INTO hid FROM vmdesk.hosts WHERE name = p_host;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no host named %', p_host USING ERRCODE = 'VDN01',
            DETAIL = json_build_object('host', p_host)::text;
    END IF;
    -- A row that appeared meanwhile (a creation starting now) wins.
    IF EXISTS (SELECT 1 FROM vmdesk.vms WHERE host_id = hid AND provider_id = p_machine
               AND status <> 'DESTROYED') THEN
        RETURN false;
    END IF;
    INSERT INTO vmdesk.quarantine (host_id, machine) VALUES (hid, p_machine) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM vmdesk.record('system', 'recovery.quarantine', 'warning', 'vmdesk', NULL, NULL, NULL,
        jsonb_build_object('host', p_host, 'machine', p_machine, 'powered_off', p_powered_off,
            'reason', 'on the host with this store''s mark but without a VM row; '
                      || 'kept with its disk until ''vmdesk recover --purge'''));
    RETURN true;
END $$;

-- Forgets the quarantined machines of a host that are no longer on it
-- (p_marked: the marked machines it has now) or that have a row again.
CREATE FUNCTION vmdesk.quarantine_keep(p_host text, p_marked text[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE hid bigint;
BEGIN
    PERFORM vmdesk.require_admin('run recovery');
    SELECT id INTO hid FROM vmdesk.hosts WHERE name = p_host;
    DELETE FROM vmdesk.quarantine q
     WHERE q.host_id = hid
       AND (NOT (q.machine = ANY (coalesce(p_marked, '{}')))
            OR EXISTS (SELECT 1 FROM vmdesk.vms v WHERE v.host_id = hid AND v.provider_id = q.machine
                       AND v.status <> 'DESTROYED'));
END $$;

-- A quarantined machine was deleted from its host (definition and disk).
CREATE FUNCTION vmdesk.quarantine_purged(p_host text, p_machine text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; hid bigint; found_at timestamptz;
BEGIN
    a := vmdesk.require_admin('purge quarantined machines');
    SELECT id INTO hid FROM vmdesk.hosts WHERE name = p_host;
    DELETE FROM vmdesk.quarantine WHERE host_id = hid AND machine = p_machine
        RETURNING quarantine.found_at INTO found_at;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'machine % on host % is not quarantined', p_machine, p_host USING ERRCODE = 'VDN01',
            DETAIL = json_build_object('machine', p_machine)::text;
    END IF;
    PERFORM vmdesk.record('admin', 'recovery.purge', 'warning', a.name, NULL, NULL, NULL,
        jsonb_build_object('host', p_host, 'machine', p_machine, 'found_at', vmdesk.ts(found_at),
                           'removed', true));
END $$;

-- 4. VM metadata: the owner or an admin merges KEY=VALUE pairs (checked by
--    the desk and again here) into a VM's metadata.
CREATE FUNCTION vmdesk.vm_meta(p_vm text, p_patch jsonb) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; v vmdesk.vms; k text; val jsonb;
BEGIN
    a := vmdesk.caller();
    SELECT * INTO v FROM vmdesk.vms WHERE name = p_vm FOR UPDATE;
    IF NOT FOUND OR NOT (v.project_id IS NOT NULL OR v.owner_user_id = a.id OR vmdesk.is_admin()) THEN
        RAISE EXCEPTION 'no VM named %', p_vm USING ERRCODE = 'VDN01',
            DETAIL = json_build_object('vm', p_vm)::text;
    END IF;
    IF v.owner_user_id IS DISTINCT FROM a.id AND NOT vmdesk.is_admin() THEN
        RAISE EXCEPTION '% may not act on VM %', a.name, v.name USING ERRCODE = '42501',
            DETAIL = json_build_object('forbidden', 'act on VM ' || v.name)::text;
    END IF;
    IF v.status = 'DESTROYED' THEN
        RAISE EXCEPTION 'VM % is destroyed: its metadata can no longer change', v.name USING ERRCODE = '22023';
    END IF;
    IF jsonb_typeof(p_patch) IS DISTINCT FROM 'object' OR p_patch = '{}' THEN
        RAISE EXCEPTION 'give at least one KEY=VALUE' USING ERRCODE = '22023';
    END IF;
    FOR k, val IN SELECT * FROM jsonb_each(p_patch) LOOP
        PERFORM vmdesk.check_name('metadata key', k);
        IF jsonb_typeof(val) <> 'string' OR length(val #>> '{}') NOT BETWEEN 1 AND 500
           OR (val #>> '{}') ~ '[[:cntrl:]]' THEN
            RAISE EXCEPTION 'the value of % must be 1 to 500 printable characters', k USING ERRCODE = '22023';
        END IF;
    END LOOP;
    UPDATE vmdesk.vms SET metadata = metadata || p_patch, updated_at = now() WHERE id = v.id;
    PERFORM vmdesk.record('vm', 'vm.meta', 'info', a.name, v.id, NULL, v.owner_user_id,
        jsonb_build_object('vm', v.name, 'set', p_patch));
    RETURN v.id;
END $$;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA vmdesk FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vmdesk.worker_register(text), vmdesk.worker_alive(text),
    vmdesk.vm_import(text, text, jsonb), vmdesk.machine_known(text, text),
    vmdesk.quarantine_add(text, text, boolean), vmdesk.quarantine_keep(text, text[]),
    vmdesk.quarantine_purged(text, text), vmdesk.vm_meta(text, jsonb)
    TO @USERS@;
