-- Cost controls (issue 16): a project's maximum session length, idle
-- shutdown and weekly quota per user (NULL: no limit), and what enforcing
-- them found of each session. The quota is the database's own rule: a
-- session past it is never inserted, whoever calls.

ALTER TABLE vmdesk.projects
    ADD COLUMN max_session_minutes bigint CHECK (max_session_minutes BETWEEN 1 AND 43200),
    ADD COLUMN idle_minutes bigint CHECK (idle_minutes BETWEEN 1 AND 43200),
    ADD COLUMN idle_cpu_percent bigint NOT NULL DEFAULT 5 CHECK (idle_cpu_percent BETWEEN 0 AND 100),
    ADD COLUMN weekly_hours bigint CHECK (weekly_hours BETWEEN 1 AND 168);

ALTER TABLE vmdesk.sessions
    ADD COLUMN idle_since timestamptz,
    ADD COLUMN idle_warned_at timestamptz,
    ADD COLUMN length_warned_at timestamptz;

CREATE INDEX sessions_user_project ON vmdesk.sessions (user_id, project_id, started_at);

CREATE FUNCTION vmdesk.project_limits_set(p_project text, p_max bigint, p_idle bigint,
    p_cpu bigint, p_weekly bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; p vmdesk.projects;
BEGIN
    a := vmdesk.require_admin('set project limits');
    SELECT * INTO p FROM vmdesk.projects WHERE name = p_project FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no project named %', p_project USING ERRCODE = 'VDN01',
            DETAIL = json_build_object('project', p_project)::text;
    END IF;
    UPDATE vmdesk.projects SET max_session_minutes = p_max, idle_minutes = p_idle,
           idle_cpu_percent = p_cpu, weekly_hours = p_weekly
     WHERE id = p.id;
    PERFORM vmdesk.record('admin', 'project.limits', 'info', a.name, NULL, NULL, NULL,
        jsonb_build_object('project', p.name,
            'was', jsonb_build_object('max_session_minutes', p.max_session_minutes,
                'idle_minutes', p.idle_minutes, 'idle_cpu_percent', p.idle_cpu_percent,
                'weekly_hours', p.weekly_hours),
            'now', jsonb_build_object('max_session_minutes', p_max, 'idle_minutes', p_idle,
                'idle_cpu_percent', p_cpu, 'weekly_hours', p_weekly)));
END $$;

-- Refuses a new session when its user held the project's weekly hours or
-- more of sessions there in the last 7 days (what ran inside them counts).
CREATE FUNCTION vmdesk.session_quota() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE lim bigint; pname text; used double precision;
BEGIN
    -- A new allocation; not a session copied in by `store migrate`.
    IF NEW.status <> 'REQUESTED' OR NEW.started_at IS NOT NULL THEN
        RETURN NEW;
    END IF;
    SELECT weekly_hours, name INTO lim, pname FROM vmdesk.projects WHERE id = NEW.project_id;
    IF lim IS NULL THEN
        RETURN NEW;
    END IF;
    SELECT coalesce(sum(greatest(0, extract(epoch FROM
               least(coalesce(ended_at, now()), now()) - greatest(started_at, now() - interval '7 days')))), 0)
      INTO used FROM vmdesk.sessions
     WHERE user_id = NEW.user_id AND project_id = NEW.project_id AND started_at IS NOT NULL
       AND (ended_at IS NULL OR ended_at > now() - interval '7 days');
    IF used >= lim * 3600 THEN
        RAISE EXCEPTION 'the weekly quota of project "%" is used up: % min of % h held in the last 7 days',
            pname, floor(used / 60)::bigint, lim USING ERRCODE = 'VDQ01',
            DETAIL = json_build_object('project', pname, 'hours', lim,
                                       'used_minutes', floor(used / 60)::bigint)::text;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER session_quota BEFORE INSERT ON vmdesk.sessions
    FOR EACH ROW EXECUTE FUNCTION vmdesk.session_quota();

-- ACTIVE sessions of projects with a length or idle limit (admin).
CREATE FUNCTION vmdesk.sessions_limited() RETURNS TABLE (o_id bigint, o_user text, o_project text,
    o_max bigint, o_idle bigint, o_cpu bigint, o_weekly bigint, o_started text, o_idle_since text,
    o_idle_warned text, o_length_warned text, o_vm bigint, o_console boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    PERFORM vmdesk.require_admin('enforce project limits');
    RETURN QUERY
    SELECT s.id, u.name, p.name, p.max_session_minutes, p.idle_minutes, p.idle_cpu_percent,
           p.weekly_hours, vmdesk.ts(s.started_at), vmdesk.ts(s.idle_since),
           vmdesk.ts(s.idle_warned_at), vmdesk.ts(s.length_warned_at), s.vm_id,
           EXISTS (SELECT 1 FROM vmdesk.consoles c WHERE c.vm_id = s.vm_id)
      FROM vmdesk.sessions s JOIN vmdesk.users u ON u.id = s.user_id
      JOIN vmdesk.projects p ON p.id = s.project_id
     WHERE s.status = 'ACTIVE' AND s.started_at IS NOT NULL
       AND (p.max_session_minutes IS NOT NULL OR p.idle_minutes IS NOT NULL)
     ORDER BY s.id;
END $$;

-- What enforcing the limits found of a session: since when it is idle
-- (NULL: active, which clears the idle warning), a warning given at p_now
-- (p_rule, closing at p_at; an event), a limit reached (an event).
CREATE FUNCTION vmdesk.session_limit_mark(p_id bigint, p_idle_since text, p_rule text, p_at text,
    p_reached text, p_now text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; s vmdesk.sessions; uname text; vname text; pname text;
BEGIN
    a := vmdesk.require_admin('enforce project limits');
    IF p_rule IS NOT NULL AND p_rule NOT IN ('idle', 'max_session_length') THEN
        RAISE EXCEPTION 'no limit named %', p_rule USING ERRCODE = '22023';
    END IF;
    UPDATE vmdesk.sessions SET idle_since = p_idle_since::timestamptz,
           idle_warned_at = CASE WHEN p_idle_since IS NULL THEN NULL
                                 WHEN p_rule = 'idle' THEN p_now::timestamptz ELSE idle_warned_at END,
           length_warned_at = CASE WHEN p_rule = 'max_session_length' THEN p_now::timestamptz
                                   ELSE length_warned_at END
     WHERE id = p_id RETURNING * INTO s;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no session with id %', p_id USING ERRCODE = 'VDN01',
            DETAIL = json_build_object('session', p_id)::text;
    END IF;
    SELECT name INTO uname FROM vmdesk.users WHERE id = s.user_id;
    SELECT name INTO vname FROM vmdesk.vms WHERE id = s.vm_id;
    SELECT name INTO pname FROM vmdesk.projects WHERE id = s.project_id;
    IF p_rule IS NOT NULL THEN
        PERFORM vmdesk.record('session', 'session.limit_warning', 'warning', a.name, s.vm_id, s.id, s.user_id,
            jsonb_build_object('user', uname, 'vm', vname, 'project', pname, 'rule', p_rule,
                               'closes_at', p_at));
    END IF;
    IF p_reached IS NOT NULL THEN
        PERFORM vmdesk.record('session', 'session.limit_reached', 'warning', a.name, s.vm_id, s.id, s.user_id,
            jsonb_build_object('user', uname, 'vm', vname, 'project', pname, 'rule', p_reached));
    END IF;
END $$;

REVOKE EXECUTE ON FUNCTION vmdesk.session_quota() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vmdesk.project_limits_set(text, bigint, bigint, bigint, bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vmdesk.sessions_limited() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vmdesk.session_limit_mark(bigint, text, text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vmdesk.project_limits_set(text, bigint, bigint, bigint, bigint) TO @USERS@;
GRANT EXECUTE ON FUNCTION vmdesk.sessions_limited() TO @USERS@;
GRANT EXECUTE ON FUNCTION vmdesk.session_limit_mark(bigint, text, text, text, text, text) TO @USERS@;

-- A pool VM stopped for running with no session is a system note too.
CREATE OR REPLACE FUNCTION vmdesk.system_note(p_action text, p_severity text, p_details jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users;
BEGIN
    a := vmdesk.require_admin('write system events');
    IF p_action NOT IN ('serve.lead', 'serve.stop', 'clock.jump', 'vm.orphan_stop') THEN
        RAISE EXCEPTION 'no system note %', p_action USING ERRCODE = '22023';
    END IF;
    IF p_severity NOT IN ('info', 'warning', 'critical') THEN
        RAISE EXCEPTION 'no severity %', p_severity USING ERRCODE = '22023';
    END IF;
    PERFORM vmdesk.record('system', p_action, p_severity,
        CASE WHEN p_action IN ('clock.jump', 'vm.orphan_stop') THEN 'vmdesk' ELSE a.name END,
        NULL, NULL, NULL, p_details);
END $$;
