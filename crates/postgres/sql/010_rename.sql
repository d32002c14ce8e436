-- Projects and workspaces renamed, and deleted when empty (issue 16): no
-- VMs and no sessions, past ones too (their history names them).

CREATE FUNCTION vmdesk.not_empty(p_kind text, p_name text, p_vms bigint, p_sessions bigint) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE what text[] := '{}';
BEGIN
    IF p_vms = 0 AND p_sessions = 0 THEN
        RETURN;
    END IF;
    IF p_vms > 0 THEN
        what := what || format('%s VM%s', p_vms, CASE WHEN p_vms = 1 THEN '' ELSE 's' END);
    END IF;
    IF p_sessions > 0 THEN
        what := what || format('%s session%s (past ones too)', p_sessions,
                               CASE WHEN p_sessions = 1 THEN '' ELSE 's' END);
    END IF;
    RAISE EXCEPTION 'the % % is not empty: it has %; only an empty one is deleted',
        p_kind, p_name, array_to_string(what, ' and ') USING ERRCODE = '22023';
END $$;

CREATE FUNCTION vmdesk.project_named(p_name text) RETURNS vmdesk.projects
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE p vmdesk.projects;
BEGIN
    SELECT * INTO p FROM vmdesk.projects WHERE name = p_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no project named %', p_name USING ERRCODE = 'VDN01',
            DETAIL = json_build_object('project', p_name)::text;
    END IF;
    RETURN p;
END $$;

CREATE FUNCTION vmdesk.workspace_named(p_project text, p_name text) RETURNS vmdesk.workspaces
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE p vmdesk.projects; w vmdesk.workspaces;
BEGIN
    p := vmdesk.project_named(p_project);
    SELECT * INTO w FROM vmdesk.workspaces WHERE project_id = p.id AND name = p_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'project % has no workspace named %', p_project, p_name USING ERRCODE = 'VDN01',
            DETAIL = json_build_object('project', p_project, 'workspace', p_name)::text;
    END IF;
    RETURN w;
END $$;

CREATE FUNCTION vmdesk.project_rename(p_name text, p_new text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; p vmdesk.projects;
BEGIN
    a := vmdesk.require_admin('rename projects');
    PERFORM vmdesk.check_name('project', p_new);
    p := vmdesk.project_named(p_name);
    PERFORM 1 FROM vmdesk.projects WHERE name = p_new AND id <> p.id;
    IF FOUND THEN
        PERFORM vmdesk.taken('project', p_new);
    END IF;
    UPDATE vmdesk.projects SET name = p_new WHERE id = p.id;
    PERFORM vmdesk.record('admin', 'project.rename', 'info', a.name, NULL, NULL, NULL,
        jsonb_build_object('project', p_new, 'was', p_name));
END $$;

CREATE FUNCTION vmdesk.project_delete(p_name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; p vmdesk.projects; vms bigint; sessions bigint;
BEGIN
    a := vmdesk.require_admin('delete projects');
    p := vmdesk.project_named(p_name);
    PERFORM 1 FROM vmdesk.projects WHERE id = p.id FOR UPDATE;
    SELECT count(*) INTO vms FROM vmdesk.vms WHERE project_id = p.id;
    SELECT count(*) INTO sessions FROM vmdesk.sessions WHERE project_id = p.id;
    PERFORM vmdesk.not_empty('project', p_name, vms, sessions);
    DELETE FROM vmdesk.workspaces WHERE project_id = p.id;
    DELETE FROM vmdesk.projects WHERE id = p.id;
    PERFORM vmdesk.record('admin', 'project.delete', 'info', a.name, NULL, NULL, NULL,
        jsonb_build_object('project', p_name));
END $$;

CREATE FUNCTION vmdesk.workspace_rename(p_project text, p_name text, p_new text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; w vmdesk.workspaces;
BEGIN
    a := vmdesk.require_admin('rename workspaces');
    PERFORM vmdesk.check_name('workspace', p_new);
    w := vmdesk.workspace_named(p_project, p_name);
    PERFORM 1 FROM vmdesk.workspaces WHERE project_id = w.project_id AND name = p_new AND id <> w.id;
    IF FOUND THEN
        PERFORM vmdesk.taken('workspace', p_new);
    END IF;
    UPDATE vmdesk.workspaces SET name = p_new WHERE id = w.id;
    PERFORM vmdesk.record('admin', 'workspace.rename', 'info', a.name, NULL, NULL, NULL,
        jsonb_build_object('project', p_project, 'workspace', p_new, 'was', p_name));
END $$;

CREATE FUNCTION vmdesk.workspace_delete(p_project text, p_name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; w vmdesk.workspaces; sessions bigint;
BEGIN
    a := vmdesk.require_admin('delete workspaces');
    w := vmdesk.workspace_named(p_project, p_name);
    PERFORM 1 FROM vmdesk.workspaces WHERE id = w.id FOR UPDATE;
    SELECT count(*) INTO sessions FROM vmdesk.sessions WHERE workspace_id = w.id;
    PERFORM vmdesk.not_empty('workspace', p_name, 0, sessions);
    DELETE FROM vmdesk.workspaces WHERE id = w.id;
    PERFORM vmdesk.record('admin', 'workspace.delete', 'info', a.name, NULL, NULL, NULL,
        jsonb_build_object('project', p_project, 'workspace', p_name));
END $$;

REVOKE EXECUTE ON FUNCTION vmdesk.not_empty(text, text, bigint, bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vmdesk.project_named(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vmdesk.workspace_named(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vmdesk.project_rename(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vmdesk.project_delete(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vmdesk.workspace_rename(text, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vmdesk.workspace_delete(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vmdesk.project_rename(text, text) TO @USERS@;
GRANT EXECUTE ON FUNCTION vmdesk.project_delete(text) TO @USERS@;
GRANT EXECUTE ON FUNCTION vmdesk.workspace_rename(text, text, text) TO @USERS@;
GRANT EXECUTE ON FUNCTION vmdesk.workspace_delete(text, text) TO @USERS@;
