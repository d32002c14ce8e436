-- vmdesk team store, step 2: the functions every change goes through.
-- Each is SECURITY DEFINER (runs as the owner, who alone writes the tables),
-- pins its search_path, and checks session_user before it acts. A check and
-- the change it guards are one statement or hold a row lock, so concurrent
-- callers cannot both pass a check that only one of them may pass.
-- Errors: 42501 forbidden, 22023 bad input, VDN01 unknown name, VDB01 not
-- enough credits, VDA01..VDA04 no VM to allocate, VDS01 wrong state.

CREATE FUNCTION vmdesk.caller() RETURNS vmdesk.users LANGUAGE plpgsql STABLE
SET search_path = pg_catalog AS $$
DECLARE u vmdesk.users;
BEGIN
    SELECT * INTO u FROM vmdesk.users WHERE name = session_user;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the login % is not a user of this vmdesk store', session_user
            USING ERRCODE = '42501';
    END IF;
    RETURN u;
END $$;

CREATE FUNCTION vmdesk.require_admin(action text) RETURNS vmdesk.users LANGUAGE plpgsql STABLE
SET search_path = pg_catalog AS $$
DECLARE u vmdesk.users;
BEGIN
    u := vmdesk.caller();
    IF NOT vmdesk.is_admin() THEN
        RAISE EXCEPTION '% may not %: only an admin may', session_user, action USING ERRCODE = '42501',
            DETAIL = json_build_object('admin_only', action)::text;
    END IF;
    RETURN u;
END $$;

CREATE FUNCTION vmdesk.user_named(p_name text) RETURNS vmdesk.users LANGUAGE plpgsql STABLE
SET search_path = pg_catalog AS $$
DECLARE u vmdesk.users;
BEGIN
    SELECT * INTO u FROM vmdesk.users WHERE name = p_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no user named %', p_name USING ERRCODE = 'VDN01',
            DETAIL = json_build_object('user', p_name)::text;
    END IF;
    RETURN u;
END $$;

CREATE FUNCTION vmdesk.check_name(kind text, value text) RETURNS void LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog AS $$
BEGIN
    IF value IS NULL OR value !~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$' THEN
        RAISE EXCEPTION 'the % name % may hold only letters, digits, ''.'', ''_'' and ''-'', must start with a letter or digit, and is at most 63 characters',
            kind, quote_literal(coalesce(value, '')) USING ERRCODE = '22023';
    END IF;
END $$;

CREATE FUNCTION vmdesk.check_reason(value text) RETURNS void LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog AS $$
BEGIN
    IF value IS NULL OR btrim(value) = '' THEN
        RAISE EXCEPTION 'the reason is empty' USING ERRCODE = '22023';
    END IF;
    IF char_length(value) > 500 THEN
        RAISE EXCEPTION 'the reason is longer than 500 characters' USING ERRCODE = '22023';
    END IF;
    IF value ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION 'the reason holds control characters' USING ERRCODE = '22023';
    END IF;
END $$;

-- (PL/pgSQL rather than SQL: its plan is cached per session; a SQL function
-- with SET is planned at every call.)
CREATE FUNCTION vmdesk.record(p_type text, p_action text, p_severity text, p_actor text,
    p_vm bigint, p_session bigint, p_subject bigint, p_details jsonb) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE id bigint;
BEGIN
    INSERT INTO vmdesk.events (type, action, severity, actor, vm_id, session_id, subject_id, details)
    VALUES (p_type, p_action, p_severity, p_actor, p_vm, p_session, p_subject, p_details)
    RETURNING events.id INTO id;
    RETURN id;
END $$;

-- The price of a VM, as crates/core's ledger::quote: RAM/512*5 + disk/10*2 +
-- CPUs*10 credits, rounded up, at least 10. Prices are the database's, so a
-- client cannot name its own.
CREATE FUNCTION vmdesk.price(ram_mb bigint, disk_gb bigint, cpus bigint) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
BEGIN
    IF ram_mb IS NULL OR ram_mb NOT BETWEEN 64 AND 1048576 THEN
        RAISE EXCEPTION 'memory must be between 64 and 1048576 MB, not %', ram_mb USING ERRCODE = '22023';
    END IF;
    IF disk_gb IS NULL OR disk_gb NOT BETWEEN 1 AND 65536 THEN
        RAISE EXCEPTION 'disk must be between 1 and 65536 GB, not %', disk_gb USING ERRCODE = '22023';
    END IF;
    IF cpus IS NULL OR cpus NOT BETWEEN 1 AND 256 THEN
        RAISE EXCEPTION 'the number of CPUs must be between 1 and 256, not %', cpus USING ERRCODE = '22023';
    END IF;
    RETURN greatest(10, (ram_mb * 50 + disk_gb * 1024 + cpus * 51200 + 5119) / 5120);
END $$;

CREATE FUNCTION vmdesk.whoami() RETURNS vmdesk.users LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog AS $$ SELECT * FROM vmdesk.caller() $$;

-- Users. A user is a login role of the cluster in the store's user group;
-- an admin is also in the admin group. The password arrives as a SCRAM
-- verifier made by the client, so no statement log ever holds it.
CREATE FUNCTION vmdesk.user_add(p_name text, p_admin boolean, p_verifier text) RETURNS vmdesk.users
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; u vmdesk.users; r record;
BEGIN
    a := vmdesk.require_admin('add users');
    PERFORM vmdesk.check_name('user', p_name);
    IF p_name = 'vmdesk' OR p_name LIKE 'pg\_%' THEN
        RAISE EXCEPTION 'the name % is reserved', p_name USING ERRCODE = '22023';
    END IF;
    IF p_verifier IS NOT NULL AND p_verifier NOT LIKE 'SCRAM-SHA-256$%' THEN
        RAISE EXCEPTION 'the password must arrive as a SCRAM-SHA-256 verifier' USING ERRCODE = '22023';
    END IF;
    PERFORM 1 FROM vmdesk.users WHERE name = p_name;
    IF FOUND THEN
        RAISE EXCEPTION 'the user % exists already', p_name USING ERRCODE = '23505',
            DETAIL = json_build_object('kind', 'user', 'name', p_name)::text;
    END IF;
    SELECT rolsuper, rolcanlogin INTO r FROM pg_roles WHERE rolname = p_name;
    IF FOUND THEN
        -- A login the cluster has already (made by its administrator, or a
        -- user of another store) joins as it is; its password is its own.
        IF r.rolsuper OR NOT r.rolcanlogin THEN
            RAISE EXCEPTION 'the role % is not a plain login and cannot be a vmdesk user', p_name
                USING ERRCODE = '22023';
        END IF;
        IF p_verifier IS NOT NULL THEN
            RAISE EXCEPTION 'the login % exists already; add it without a password', p_name
                USING ERRCODE = '23505';
        END IF;
    ELSIF p_verifier IS NULL THEN
        EXECUTE format('CREATE ROLE %I LOGIN', p_name);
    ELSE
        EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L', p_name, p_verifier);
    END IF;
    EXECUTE format('GRANT %I TO %I', @USERS_LIT@, p_name);
    IF p_admin THEN
        EXECUTE format('GRANT %I TO %I', @ADMINS_LIT@, p_name);
    END IF;
    INSERT INTO vmdesk.users (name, role) VALUES (p_name, CASE WHEN p_admin THEN 'admin' ELSE 'user' END)
        RETURNING * INTO u;
    PERFORM vmdesk.record('admin', 'user.add', 'info', a.name, NULL, NULL, u.id,
        jsonb_build_object('user', u.name, 'role', u.role));
    RETURN u;
END $$;

CREATE FUNCTION vmdesk.user_role(p_name text, p_role text) RETURNS vmdesk.users
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; u vmdesk.users; admins bigint;
BEGIN
    a := vmdesk.require_admin('change roles');
    IF p_role IS NULL OR p_role NOT IN ('admin', 'user') THEN
        RAISE EXCEPTION 'a role is admin or user, not %', coalesce(p_role, 'nothing') USING ERRCODE = '22023';
    END IF;
    -- Serialises role changes, so two admins cannot demote each other at once.
    LOCK TABLE vmdesk.users IN SHARE ROW EXCLUSIVE MODE;
    u := vmdesk.user_named(p_name);
    IF u.role = p_role THEN
        RETURN u;
    END IF;
    IF p_role = 'user' THEN
        SELECT count(*) INTO admins FROM vmdesk.users WHERE role = 'admin';
        IF admins <= 1 THEN
            RAISE EXCEPTION '% is the last admin; make another user admin first', p_name USING ERRCODE = '22023';
        END IF;
        EXECUTE format('REVOKE %I FROM %I', @ADMINS_LIT@, p_name);
    ELSE
        EXECUTE format('GRANT %I TO %I', @ADMINS_LIT@, p_name);
    END IF;
    UPDATE vmdesk.users SET role = p_role WHERE id = u.id RETURNING * INTO u;
    PERFORM vmdesk.record('admin', 'user.role', 'info', a.name, NULL, NULL, u.id,
        jsonb_build_object('user', u.name, 'role', p_role));
    RETURN u;
END $$;

-- Credits.
CREATE FUNCTION vmdesk.credits_grant(p_name text, p_amount bigint, p_reason text) RETURNS vmdesk.ledger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; u vmdesk.users; e vmdesk.ledger;
BEGIN
    a := vmdesk.require_admin('grant credits');
    IF p_amount IS NULL OR p_amount NOT BETWEEN 1 AND 1000000000 THEN
        RAISE EXCEPTION 'a grant must be between 1 and 1000000000 credits, not %', p_amount USING ERRCODE = '22023';
    END IF;
    PERFORM vmdesk.check_reason(p_reason);
    u := vmdesk.user_named(p_name);
    INSERT INTO vmdesk.ledger (user_id, amount, kind, reason, actor)
        VALUES (u.id, p_amount, 'grant', p_reason, a.name) RETURNING * INTO e;
    PERFORM vmdesk.record('billing', 'credits.grant', 'info', a.name, NULL, NULL, u.id,
        jsonb_build_object('user', u.name, 'amount', p_amount, 'reason', p_reason));
    RETURN e;
END $$;

-- Takes p_amount from p_user's balance if it covers it (locked row: the check
-- and the debit are one step); refuses with VDB01 and changes nothing if not.
CREATE FUNCTION vmdesk.debit(p_user vmdesk.users, p_amount bigint, p_kind text, p_reason text,
    p_actor text, p_vm bigint, p_what text) RETURNS vmdesk.ledger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE have bigint; e vmdesk.ledger;
BEGIN
    SELECT balance INTO have FROM vmdesk.users WHERE id = p_user.id FOR UPDATE;
    IF have < p_amount THEN
        RAISE EXCEPTION 'not enough credits: % costs % and % has %', p_what, p_amount, p_user.name, have
            USING ERRCODE = 'VDB01',
            DETAIL = json_build_object('user', p_user.name, 'cost', p_amount, 'balance', have)::text;
    END IF;
    INSERT INTO vmdesk.ledger (user_id, amount, kind, reason, vm_id, actor)
        VALUES (p_user.id, -p_amount, p_kind, p_reason, p_vm, p_actor) RETURNING * INTO e;
    RETURN e;
END $$;

CREATE FUNCTION vmdesk.charge(p_from text, p_amount bigint, p_kind text, p_reason text) RETURNS vmdesk.ledger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; u vmdesk.users; e vmdesk.ledger;
BEGIN
    a := vmdesk.caller();
    IF p_amount IS NULL OR p_amount <= 0 THEN
        RAISE EXCEPTION 'a charge must be positive, not %', p_amount USING ERRCODE = '22023';
    END IF;
    IF p_kind IS NULL OR p_kind NOT IN ('vm_create', 'runtime', 'adjustment') THEN
        RAISE EXCEPTION 'a charge is of kind vm_create, runtime or adjustment, not %', coalesce(p_kind, 'nothing')
            USING ERRCODE = '22023';
    END IF;
    PERFORM vmdesk.check_reason(p_reason);
    u := vmdesk.user_named(p_from);
    IF u.id <> a.id AND NOT vmdesk.is_admin() THEN
        RAISE EXCEPTION '% may not charge the credits of %', a.name, u.name USING ERRCODE = '42501',
            DETAIL = json_build_object('forbidden', 'charge the credits of ' || u.name)::text;
    END IF;
    e := vmdesk.debit(u, p_amount, p_kind, p_reason, a.name, NULL, p_reason);
    PERFORM vmdesk.record('billing', 'credits.charge', 'info', a.name, NULL, NULL, u.id,
        jsonb_build_object('user', u.name, 'amount', p_amount, 'kind', p_kind, 'reason', p_reason));
    RETURN e;
END $$;

-- Hosts, projects, workspaces: admin's.
CREATE FUNCTION vmdesk.host_add(p_name text, p_kind text, p_uri text) RETURNS vmdesk.hosts
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; h vmdesk.hosts;
BEGIN
    a := vmdesk.require_admin('add hosts');
    PERFORM vmdesk.check_name('host', p_name);
    IF p_kind = 'libvirt' THEN
        IF p_uri IS NULL OR p_uri !~ '^(qemu|test|lxc|xen|ch|bhyve|vz)(\+(ssh|libssh|libssh2|tls|unix|tcp))?://[^[:space:][:cntrl:]]*$' THEN
            RAISE EXCEPTION 'the host URI % does not name a libvirt driver', quote_literal(coalesce(p_uri, ''))
                USING ERRCODE = '22023';
        END IF;
    ELSIF p_kind = 'azure' THEN
        IF p_uri IS NULL OR p_uri !~ '^azure://[^[:space:][:cntrl:]]+$' THEN
            RAISE EXCEPTION 'the host URI % is not an azure:// URI', quote_literal(coalesce(p_uri, ''))
                USING ERRCODE = '22023';
        END IF;
    ELSE
        RAISE EXCEPTION 'a host is of kind libvirt or azure, not %', coalesce(p_kind, 'nothing') USING ERRCODE = '22023';
    END IF;
    PERFORM 1 FROM vmdesk.hosts WHERE name = p_name;
    IF FOUND THEN
        PERFORM vmdesk.taken('host', p_name);
    END IF;
    INSERT INTO vmdesk.hosts (name, kind, uri) VALUES (p_name, p_kind, p_uri) RETURNING * INTO h;
    PERFORM vmdesk.record('admin', 'host.add', 'info', a.name, NULL, NULL, NULL,
        jsonb_build_object('host', p_name, 'kind', p_kind, 'uri', p_uri));
    RETURN h;
END $$;

CREATE FUNCTION vmdesk.project_create(p_name text) RETURNS vmdesk.projects
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; p vmdesk.projects;
BEGIN
    a := vmdesk.require_admin('create projects');
    PERFORM vmdesk.check_name('project', p_name);
    PERFORM 1 FROM vmdesk.projects WHERE name = p_name;
    IF FOUND THEN
        PERFORM vmdesk.taken('project', p_name);
    END IF;
    INSERT INTO vmdesk.projects (name) VALUES (p_name) RETURNING * INTO p;
    PERFORM vmdesk.record('admin', 'project.create', 'info', a.name, NULL, NULL, NULL,
        jsonb_build_object('project', p_name));
    RETURN p;
END $$;

CREATE FUNCTION vmdesk.workspace_create(p_name text, p_project text) RETURNS vmdesk.workspaces
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; pid bigint; w vmdesk.workspaces;
BEGIN
    a := vmdesk.require_admin('create workspaces');
    PERFORM vmdesk.check_name('workspace', p_name);
    SELECT id INTO pid FROM vmdesk.projects WHERE name = p_project;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no project named %', p_project USING ERRCODE = 'VDN01',
            DETAIL = json_build_object('project', p_project)::text;
    END IF;
    PERFORM 1 FROM vmdesk.workspaces WHERE project_id = pid AND name = p_name;
    IF FOUND THEN
        PERFORM vmdesk.taken('workspace', p_name);
    END IF;
    INSERT INTO vmdesk.workspaces (project_id, name) VALUES (pid, p_name) RETURNING * INTO w;
    PERFORM vmdesk.record('admin', 'workspace.create', 'info', a.name, NULL, NULL, NULL,
        jsonb_build_object('workspace', p_name, 'project', p_project));
    RETURN w;
END $$;

CREATE FUNCTION vmdesk.check_vm(p_name text, p_ram bigint, p_disk bigint, p_cpus bigint,
    p_host text, OUT cost bigint, OUT host_id bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
    PERFORM vmdesk.check_name('VM', p_name);
    IF p_name ~ '^[0-9]+$' THEN
        RAISE EXCEPTION 'a VM name must not be all digits (%): a number names a VM by its id', p_name
            USING ERRCODE = '22023';
    END IF;
    cost := vmdesk.price(p_ram, p_disk, p_cpus);
    SELECT id INTO host_id FROM vmdesk.hosts WHERE name = p_host;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no host named %', p_host USING ERRCODE = 'VDN01',
            DETAIL = json_build_object('host', p_host)::text;
    END IF;
END $$;

CREATE FUNCTION vmdesk.taken(p_kind text, p_name text) RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog AS $$
BEGIN
    RAISE EXCEPTION 'a % named % already exists', p_kind, p_name USING ERRCODE = '23505',
        DETAIL = json_build_object('kind', p_kind, 'name', p_name)::text;
END $$;

-- A VM of a project's pool (admin's, not charged), CREATING while the
-- admin's desk defines it on its host; vm_add_done settles it.
CREATE FUNCTION vmdesk.vm_add(p_name text, p_project text, p_host text, p_os text, p_ram bigint,
    p_disk bigint, p_cpus bigint, p_vm_type text, p_machine text, p_worker text) RETURNS vmdesk.vms
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; c record; pid bigint; v vmdesk.vms;
BEGIN
    a := vmdesk.require_admin('add VMs to pools');
    c := vmdesk.check_vm(p_name, p_ram, p_disk, p_cpus, p_host);
    PERFORM vmdesk.check_name('OS', p_os);
    SELECT id INTO pid FROM vmdesk.projects WHERE name = p_project;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no project named %', p_project USING ERRCODE = 'VDN01',
            DETAIL = json_build_object('project', p_project)::text;
    END IF;
    PERFORM 1 FROM vmdesk.vms WHERE name = p_name;
    IF FOUND THEN
        PERFORM vmdesk.taken('VM', p_name);
    END IF;
    INSERT INTO vmdesk.vms (name, os_type, ram_mb, disk_gb, cpu_cores, vm_type, status, project_id,
            host_id, provider_id, worker, start_after_create)
        VALUES (p_name, p_os, p_ram, p_disk, p_cpus, coalesce(p_vm_type, 'standard'), 'CREATING', pid,
            c.host_id, p_machine, p_worker, false)
        RETURNING * INTO v;
    RETURN v;
END $$;

-- The admin's desk has defined the pool VM on its host (STOPPED, ready for
-- sessions) or could not (the row goes; nothing was charged).
CREATE FUNCTION vmdesk.vm_add_done(p_id bigint, p_ok boolean, p_details jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; v vmdesk.vms;
BEGIN
    a := vmdesk.require_admin('add VMs to pools');
    SELECT * INTO v FROM vmdesk.vms WHERE id = p_id AND status = 'CREATING' AND project_id IS NOT NULL
        FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no pool VM % being added', p_id USING ERRCODE = 'VDN01',
            DETAIL = json_build_object('vm', p_id::text)::text;
    END IF;
    IF p_ok THEN
        UPDATE vmdesk.vms SET status = 'STOPPED', worker = NULL, updated_at = now() WHERE id = p_id;
        PERFORM vmdesk.record('vm', 'vm.add', 'info', a.name, v.id, NULL, NULL, p_details);
    ELSE
        DELETE FROM vmdesk.vms WHERE id = p_id;
        PERFORM vmdesk.record('vm', 'vm.add_failed', 'warning', a.name, NULL, NULL, NULL, p_details);
    END IF;
END $$;

-- A VM of one's own, charged at its price in the same transaction: either it
-- is paid for and exists, or neither. p_host NULL: the only host there is.
CREATE FUNCTION vmdesk.vm_create(p_name text, p_host text, p_os text, p_ram bigint, p_disk bigint,
    p_cpus bigint, p_start boolean, p_machine text, p_worker text) RETURNS vmdesk.vms
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; c record; v vmdesk.vms; host text := p_host; n bigint;
BEGIN
    a := vmdesk.caller();
    -- The payer's row first: one user's concurrent creations queue here.
    -- (Inserting the VM takes a key-share lock on it through the foreign
    -- key; taking the update lock of the debit only after that deadlocks
    -- two creations that both hold the first.)
    PERFORM 1 FROM vmdesk.users WHERE id = a.id FOR UPDATE;
    IF host IS NULL THEN
        SELECT count(*), min(name) INTO n, host FROM vmdesk.hosts;
        IF n = 0 THEN
            RAISE EXCEPTION 'there is no host yet: an admin adds one with ''vmdesk host add''' USING ERRCODE = '22023';
        ELSIF n > 1 THEN
            RAISE EXCEPTION 'there are several hosts: name one with --host' USING ERRCODE = '22023';
        END IF;
    END IF;
    c := vmdesk.check_vm(p_name, p_ram, p_disk, p_cpus, host);
    PERFORM vmdesk.check_name('OS', p_os);
    PERFORM 1 FROM vmdesk.vms WHERE name = p_name;
    IF FOUND THEN
        PERFORM vmdesk.taken('VM', p_name);
    END IF;
    INSERT INTO vmdesk.vms (name, os_type, ram_mb, disk_gb, cpu_cores, vm_type, status, owner_user_id,
            host_id, provider_id, worker, start_after_create, metadata)
        VALUES (p_name, p_os, p_ram, p_disk, p_cpus, 'standard', 'CREATING', a.id,
            c.host_id, p_machine, p_worker, coalesce(p_start, true), jsonb_build_object('cost', c.cost))
        RETURNING * INTO v;
    PERFORM vmdesk.debit(a, c.cost, 'vm_create', 'create VM ' || p_name, a.name, v.id, 'VM ' || p_name);
    PERFORM vmdesk.record('billing', 'credits.charge', 'info', a.name, v.id, NULL, a.id,
        jsonb_build_object('user', a.name, 'amount', c.cost, 'kind', 'vm_create', 'vm', p_name));
    PERFORM vmdesk.record('vm', 'vm.create', 'info', a.name, v.id, NULL, a.id,
        jsonb_build_object('vm', p_name, 'ram_mb', p_ram, 'disk_gb', p_disk, 'cpu_cores', p_cpus,
            'os_type', p_os, 'cost', c.cost, 'start', coalesce(p_start, true), 'status', 'CREATING'));
    RETURN v;
END $$;

-- Who may drive a VM's machine: its owner, the holder of its live session,
-- or an admin.
CREATE FUNCTION vmdesk.may_drive(v vmdesk.vms) RETURNS boolean LANGUAGE sql STABLE
SET search_path = pg_catalog AS $$
    SELECT v.owner_user_id IS NOT DISTINCT FROM vmdesk.me() AND v.owner_user_id IS NOT NULL
        OR EXISTS (SELECT 1 FROM vmdesk.sessions s WHERE s.id = v.live_session_id AND s.user_id = vmdesk.me())
        OR vmdesk.is_admin()
$$;

-- Takes a VM being created that no worker provisions, for p_worker.
CREATE FUNCTION vmdesk.vm_claim(p_id bigint, p_worker text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    PERFORM vmdesk.caller();
    UPDATE vmdesk.vms v SET worker = p_worker
     WHERE id = p_id AND status = 'CREATING' AND worker IS NULL AND vmdesk.may_drive(v);
    RETURN FOUND;
END $$;

-- Whether a VM to be created is to be started too.
CREATE FUNCTION vmdesk.vm_start_after_create(p_id bigint) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
    SELECT start_after_create FROM vmdesk.vms v WHERE id = p_id AND vmdesk.may_drive(v)
$$;

-- A creation's end: the machine exists (STOPPED or RUNNING) or it failed
-- (FAILED_TO_START; the credits are not refunded).
CREATE FUNCTION vmdesk.vm_created(p_id bigint, p_status text, p_reason text) RETURNS vmdesk.vms
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; v vmdesk.vms; who text;
BEGIN
    a := vmdesk.caller();
    SELECT * INTO v FROM vmdesk.vms WHERE id = p_id FOR UPDATE;
    IF NOT FOUND OR NOT vmdesk.may_drive(v) THEN
        RAISE EXCEPTION 'no VM % of %', p_id, a.name USING ERRCODE = 'VDN01',
            DETAIL = json_build_object('vm', p_id::text)::text;
    END IF;
    IF v.status <> 'CREATING' THEN
        RAISE EXCEPTION 'VM % is %, not being created', v.name, v.status USING ERRCODE = 'VDS01';
    END IF;
    who := coalesce((SELECT name FROM vmdesk.users WHERE id = v.owner_user_id), a.name);
    IF p_reason IS NULL THEN
        IF p_status NOT IN ('STOPPED', 'RUNNING') THEN
            RAISE EXCEPTION 'a created VM is STOPPED or RUNNING, not %', p_status USING ERRCODE = '22023';
        END IF;
        UPDATE vmdesk.vms SET status = p_status, worker = NULL, updated_at = now(),
               started_at = CASE WHEN p_status = 'RUNNING' THEN now() END
         WHERE id = p_id RETURNING * INTO v;
        PERFORM vmdesk.record('vm', 'vm.created', 'info', who, v.id, NULL, v.owner_user_id,
            jsonb_build_object('was', 'CREATING', 'now', p_status));
    ELSE
        UPDATE vmdesk.vms SET status = 'FAILED_TO_START', worker = NULL, updated_at = now()
         WHERE id = p_id RETURNING * INTO v;
        PERFORM vmdesk.record('vm', 'vm.create_failed', 'warning', who, v.id, NULL, v.owner_user_id,
            jsonb_build_object('was', 'CREATING', 'now', 'FAILED_TO_START', 'reason', p_reason, 'refunded', false));
    END IF;
    RETURN v;
END $$;

-- Sessions. Allocation is one statement: the least recently stopped free VM
-- of the pool is locked (others skip it) and its session inserted; the
-- unique index on live sessions backs it.
CREATE FUNCTION vmdesk.session_open(p_project text, p_workspace text, p_vm_type text, p_worker text)
RETURNS vmdesk.sessions
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; pid bigint; wid bigint; s vmdesk.sessions;
    total bigint; of_type bigint; busy bigint; ready bigint;
BEGIN
    a := vmdesk.caller();
    SELECT id INTO pid FROM vmdesk.projects WHERE name = p_project;
    IF NOT FOUND THEN
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
    WITH pick AS (
        SELECT v.id FROM vmdesk.vms v
        WHERE v.project_id = pid AND (p_vm_type IS NULL OR v.vm_type = p_vm_type)
          AND v.live_session_id IS NULL AND v.status IN ('STOPPED', 'RUNNING')
        ORDER BY v.last_stopped NULLS FIRST, v.id
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    INSERT INTO vmdesk.sessions (vm_id, user_id, project_id, workspace_id, status, worker)
        SELECT pick.id, a.id, pid, wid, 'REQUESTED', p_worker FROM pick
        RETURNING * INTO s;
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
    PERFORM vmdesk.record('session', 'session.open', 'info', a.name, s.vm_id, s.id, a.id,
        jsonb_build_object('project', p_project, 'workspace', p_workspace, 'vm_type', p_vm_type,
                           'status', 'REQUESTED'));
    RETURN s;
END $$;


-- A session's next step, taken by the worker driving it (its owner's desk or
-- an admin's serve): only forward, along the lifecycle.
CREATE FUNCTION vmdesk.session_advance(p_id bigint, p_to text, p_error text) RETURNS vmdesk.sessions
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; s vmdesk.sessions;
BEGIN
    a := vmdesk.caller();
    SELECT * INTO s FROM vmdesk.sessions WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no session %', p_id USING ERRCODE = 'VDN01',
            DETAIL = json_build_object('session', p_id)::text;
    END IF;
    IF s.user_id <> a.id AND NOT vmdesk.is_admin() THEN
        RAISE EXCEPTION '% may not drive session %: it is not theirs', a.name, p_id USING ERRCODE = '42501',
            DETAIL = json_build_object('forbidden', 'drive session ' || p_id || ' of another user')::text;
    END IF;
    IF NOT ((s.status = 'REQUESTED' AND p_to IN ('STARTING', 'FAILED'))
         OR (s.status = 'STARTING' AND p_to IN ('ACTIVE', 'FAILED'))
         OR (s.status = 'TERMINATING' AND p_to IN ('COMPLETED', 'TERMINATED'))) THEN
        RAISE EXCEPTION 'session % is % and cannot become %', p_id, s.status, coalesce(p_to, 'nothing')
            USING ERRCODE = 'VDS01';
    END IF;
    UPDATE vmdesk.sessions
       SET status = p_to, error = p_error, updated_at = now(),
           started_at = CASE WHEN p_to = 'ACTIVE' THEN now() ELSE started_at END,
           ended_at = CASE WHEN p_to IN ('COMPLETED', 'TERMINATED', 'FAILED') THEN now() ELSE ended_at END
     WHERE id = p_id RETURNING * INTO s;
    IF p_to IN ('COMPLETED', 'TERMINATED', 'FAILED') THEN
        UPDATE vmdesk.vms SET last_stopped = now() WHERE id = s.vm_id;
    END IF;
    PERFORM vmdesk.record('session', 'session.' || lower(p_to),
        CASE WHEN p_to = 'FAILED' THEN 'warning' ELSE 'info' END, a.name, s.vm_id, s.id, s.user_id,
        jsonb_build_object('status', p_to, 'error', p_error));
    RETURN s;
END $$;

-- What a VM's worker or status sync found on the host: the owner's desk for
-- an own VM, an admin (serve) for any.
CREATE FUNCTION vmdesk.vm_set_status(p_id bigint, p_status text, p_provider_id text) RETURNS vmdesk.vms
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; v vmdesk.vms;
BEGIN
    a := vmdesk.caller();
    SELECT * INTO v FROM vmdesk.vms WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no VM %', p_id USING ERRCODE = 'VDN01',
            DETAIL = json_build_object('vm', p_id::text)::text;
    END IF;
    IF v.owner_user_id IS DISTINCT FROM a.id AND NOT vmdesk.is_admin() THEN
        RAISE EXCEPTION '% may not change VM %: it is not theirs', a.name, v.name USING ERRCODE = '42501',
            DETAIL = json_build_object('forbidden', 'change VM ' || v.name)::text;
    END IF;
    IF v.status = 'DESTROYED' THEN
        RAISE EXCEPTION 'VM % is destroyed', v.name USING ERRCODE = 'VDS01';
    END IF;
    IF p_status IS NULL OR p_status NOT IN ('CREATING', 'STOPPED', 'STARTING', 'RUNNING', 'STOPPING',
            'FAILED_TO_START', 'DESTROYED', 'UNKNOWN') THEN
        RAISE EXCEPTION 'no VM status %', coalesce(p_status, 'nothing') USING ERRCODE = '22023';
    END IF;
    UPDATE vmdesk.vms
       SET status = p_status, provider_id = coalesce(p_provider_id, provider_id), updated_at = now(),
           worker = CASE WHEN p_status = 'CREATING' THEN worker END,
           started_at = CASE WHEN p_status = 'RUNNING' AND v.status <> 'RUNNING' THEN now() ELSE started_at END,
           last_stopped = CASE WHEN p_status = 'STOPPED' AND v.status <> 'STOPPED' THEN now() ELSE last_stopped END
     WHERE id = p_id RETURNING * INTO v;
    PERFORM vmdesk.record('vm', 'vm.status', 'info', a.name, v.id, NULL, v.owner_user_id,
        jsonb_build_object('status', p_status));
    RETURN v;
END $$;

-- A session's life, step by step, as the worker driving it (the owner's
-- desk, or an admin's) goes. Each step moves the session and its VM together
-- and writes its event.
CREATE FUNCTION vmdesk.driven_session(p_id bigint) RETURNS vmdesk.sessions LANGUAGE plpgsql
SET search_path = pg_catalog AS $$
DECLARE s vmdesk.sessions;
BEGIN
    SELECT * INTO s FROM vmdesk.sessions WHERE id = p_id FOR UPDATE;
    IF NOT FOUND OR (s.user_id <> vmdesk.me() AND NOT vmdesk.is_admin()) THEN
        RAISE EXCEPTION 'no session %', p_id USING ERRCODE = 'VDN01',
            DETAIL = json_build_object('session', p_id)::text;
    END IF;
    RETURN s;
END $$;

CREATE FUNCTION vmdesk.session_starting(p_id bigint, p_worker text) RETURNS vmdesk.sessions
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE s vmdesk.sessions;
BEGIN
    PERFORM vmdesk.caller();
    s := vmdesk.driven_session(p_id);
    IF s.status <> 'REQUESTED' OR s.worker IS DISTINCT FROM p_worker THEN
        RAISE EXCEPTION 'session % is % and cannot be started by this process', p_id, s.status
            USING ERRCODE = 'VDS01',
            DETAIL = json_build_object('session', p_id, 'status', s.status, 'action', 'started by this process')::text;
    END IF;
    UPDATE vmdesk.sessions SET status = 'STARTING', updated_at = now() WHERE id = p_id RETURNING * INTO s;
    UPDATE vmdesk.vms SET status = 'STARTING', updated_at = now() WHERE id = s.vm_id AND status <> 'RUNNING';
    PERFORM vmdesk.record('session', 'session.starting', 'info', (SELECT name FROM vmdesk.users WHERE id = s.user_id),
        s.vm_id, s.id, s.user_id, jsonb_build_object('was', 'REQUESTED', 'now', 'STARTING'));
    RETURN s;
END $$;

CREATE FUNCTION vmdesk.session_started(p_id bigint, p_machine text) RETURNS vmdesk.sessions
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE s vmdesk.sessions;
BEGIN
    PERFORM vmdesk.caller();
    s := vmdesk.driven_session(p_id);
    IF s.status <> 'STARTING' THEN
        RAISE EXCEPTION 'session % is %, not starting', p_id, s.status USING ERRCODE = 'VDS01',
            DETAIL = json_build_object('session', p_id, 'status', s.status, 'action', 'started')::text;
    END IF;
    UPDATE vmdesk.sessions SET status = 'ACTIVE', worker = NULL, started_at = now(), updated_at = now()
     WHERE id = p_id RETURNING * INTO s;
    UPDATE vmdesk.vms SET status = 'RUNNING', updated_at = now(),
           started_at = CASE WHEN status <> 'RUNNING' THEN now() ELSE started_at END
     WHERE id = s.vm_id;
    PERFORM vmdesk.record('session', 'session.active', 'info', (SELECT name FROM vmdesk.users WHERE id = s.user_id),
        s.vm_id, s.id, s.user_id, jsonb_build_object('was', 'STARTING', 'now', 'ACTIVE', 'machine', p_machine));
    RETURN s;
END $$;

CREATE FUNCTION vmdesk.session_start_failed(p_id bigint, p_reason text, p_vm_status text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE s vmdesk.sessions;
BEGIN
    PERFORM vmdesk.caller();
    s := vmdesk.driven_session(p_id);
    IF s.status NOT IN ('REQUESTED', 'STARTING') THEN
        RAISE EXCEPTION 'session % is %, not starting', p_id, s.status USING ERRCODE = 'VDS01',
            DETAIL = json_build_object('session', p_id, 'status', s.status, 'action', 'failed')::text;
    END IF;
    UPDATE vmdesk.sessions SET status = 'FAILED', worker = NULL, error = p_reason, updated_at = now(),
           ended_at = now() WHERE id = p_id;
    -- Sent to the back of the queue: least recently stopped goes first.
    UPDATE vmdesk.vms SET status = p_vm_status, last_stopped = now(), updated_at = now() WHERE id = s.vm_id;
    PERFORM vmdesk.record('session', 'session.failed', 'warning', (SELECT name FROM vmdesk.users WHERE id = s.user_id),
        s.vm_id, s.id, s.user_id, jsonb_build_object('was', 'STARTING', 'now', 'FAILED', 'reason', p_reason,
        'vm_status', p_vm_status));
END $$;

-- Closing: an ACTIVE session becomes TERMINATING (claimed by p_worker when
-- the caller drives the shutdown itself); a REQUESTED one nobody has taken
-- is cancelled. Returns the session and whether the caller is to drive it.
CREATE FUNCTION vmdesk.session_close(p_id bigint, p_worker text, OUT s vmdesk.sessions, OUT drive boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; was text;
BEGIN
    a := vmdesk.caller();
    drive := false;
    SELECT * INTO s FROM vmdesk.sessions WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no session %', p_id USING ERRCODE = 'VDN01',
            DETAIL = json_build_object('session', p_id)::text;
    END IF;
    IF s.user_id <> a.id AND NOT vmdesk.is_admin() THEN
        RAISE EXCEPTION '% may not close session %: it is not theirs', a.name, p_id USING ERRCODE = '42501',
            DETAIL = json_build_object('forbidden', 'close session ' || p_id || ' of another user')::text;
    END IF;
    was := s.status;
    IF s.status = 'REQUESTED' AND s.worker IS NULL THEN
        -- Nothing was started for it: cancelled.
        UPDATE vmdesk.sessions SET status = 'COMPLETED', updated_at = now(), ended_at = now()
         WHERE id = p_id RETURNING * INTO s;
        PERFORM vmdesk.record('session', 'session.cancel', 'info', a.name, s.vm_id, s.id, s.user_id,
            jsonb_build_object('was', was, 'now', 'COMPLETED'));
    ELSIF s.status = 'ACTIVE' THEN
        UPDATE vmdesk.sessions SET status = 'TERMINATING', worker = p_worker, updated_at = now()
         WHERE id = p_id RETURNING * INTO s;
        UPDATE vmdesk.vms SET status = 'STOPPING', updated_at = now() WHERE id = s.vm_id AND status = 'RUNNING';
        PERFORM vmdesk.record('session', 'session.close', 'info', a.name, s.vm_id, s.id, s.user_id,
            jsonb_build_object('was', was, 'now', 'TERMINATING'));
        drive := p_worker IS NOT NULL;
    ELSIF s.status = 'TERMINATING' THEN
        IF p_worker IS NOT NULL AND s.worker IS NULL THEN
            UPDATE vmdesk.sessions SET worker = p_worker WHERE id = p_id RETURNING * INTO s;
            drive := true;
        END IF;
    ELSE
        RAISE EXCEPTION 'session % is %, and cannot be closed', p_id, s.status USING ERRCODE = 'VDS01',
            DETAIL = json_build_object('session', p_id, 'status', s.status, 'action', 'closed')::text;
    END IF;
END $$;

-- The shutdown is under way: every desk sees when the guest is forced off.
CREATE FUNCTION vmdesk.session_stopping(p_id bigint, p_force_off_at text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE s vmdesk.sessions;
BEGIN
    PERFORM vmdesk.caller();
    s := vmdesk.driven_session(p_id);
    UPDATE vmdesk.vms SET status = 'STOPPING', updated_at = now(),
           metadata = metadata || jsonb_build_object('force_off_at', p_force_off_at)
     WHERE id = s.vm_id AND status IN ('RUNNING', 'STOPPING', 'STARTING', 'UNKNOWN');
END $$;

CREATE FUNCTION vmdesk.session_ended(p_id bigint, p_end text, p_forced boolean) RETURNS vmdesk.sessions
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; s vmdesk.sessions;
BEGIN
    a := vmdesk.caller();
    s := vmdesk.driven_session(p_id);
    IF s.status <> 'TERMINATING' OR p_end NOT IN ('COMPLETED', 'TERMINATED') THEN
        RAISE EXCEPTION 'session % is % and cannot become %', p_id, s.status, p_end USING ERRCODE = 'VDS01',
            DETAIL = json_build_object('session', p_id, 'status', s.status, 'action', 'ended')::text;
    END IF;
    UPDATE vmdesk.sessions SET status = p_end, worker = NULL, updated_at = now(), ended_at = now()
     WHERE id = p_id RETURNING * INTO s;
    UPDATE vmdesk.vms SET status = 'STOPPED', last_stopped = now(), updated_at = now(),
           metadata = metadata - 'force_off_at' WHERE id = s.vm_id;
    PERFORM vmdesk.record('session', 'session.ended', 'info', a.name, s.vm_id, s.id, s.user_id,
        jsonb_build_object('was', 'TERMINATING', 'now', p_end,
            'user', (SELECT name FROM vmdesk.users WHERE id = s.user_id), 'forced_off', p_forced));
    RETURN s;
END $$;

CREATE FUNCTION vmdesk.session_close_failed(p_id bigint, p_reason text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; s vmdesk.sessions;
BEGIN
    a := vmdesk.caller();
    s := vmdesk.driven_session(p_id);
    -- Left TERMINATING and unclaimed: a later worker tries again.
    UPDATE vmdesk.sessions SET worker = NULL, error = p_reason WHERE id = p_id;
    UPDATE vmdesk.vms SET metadata = metadata - 'force_off_at' WHERE id = s.vm_id;
    PERFORM vmdesk.record('session', 'session.close_failed', 'warning', a.name, s.vm_id, s.id, s.user_id,
        jsonb_build_object('reason', p_reason));
END $$;

-- Functions are executable by PUBLIC unless told otherwise: only the store's
-- users may call its functions, and the internal ones nobody but the owner.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA vmdesk FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vmdesk.is_admin(), vmdesk.me(), vmdesk.ts(timestamptz),
    vmdesk.price(bigint, bigint, bigint),
    vmdesk.whoami(), vmdesk.user_add(text, boolean, text), vmdesk.user_role(text, text),
    vmdesk.credits_grant(text, bigint, text), vmdesk.charge(text, bigint, text, text),
    vmdesk.host_add(text, text, text), vmdesk.project_create(text), vmdesk.workspace_create(text, text),
    vmdesk.vm_add(text, text, text, text, bigint, bigint, bigint, text, text, text),
    vmdesk.vm_add_done(bigint, boolean, jsonb),
    vmdesk.vm_create(text, text, text, bigint, bigint, bigint, boolean, text, text),
    vmdesk.vm_start_after_create(bigint), vmdesk.vm_created(bigint, text, text), vmdesk.vm_claim(bigint, text),
    vmdesk.session_open(text, text, text, text), vmdesk.session_close(bigint, text),
    vmdesk.session_starting(bigint, text), vmdesk.session_started(bigint, text),
    vmdesk.session_start_failed(bigint, text, text), vmdesk.session_stopping(bigint, text),
    vmdesk.session_ended(bigint, text, boolean), vmdesk.session_close_failed(bigint, text),
    vmdesk.session_advance(bigint, text, text), vmdesk.vm_set_status(bigint, text, text)
    TO @USERS@;
