-- Issue 16: lists that refetch only what changed, and idle shutdown of own
-- VMs by their owner's choice.

-- Each VM row carries the transaction that last wrote it: set on insert (the
-- default) and on every update by the trigger below, whoever writes, and
-- when what the row shows by name (its project, host or owner) is renamed.
-- A reader's cursor is the oldest transaction its snapshot did not see
-- (pg_snapshot_xmin); the next read asks for rows written by that one or
-- later, so a transaction that commits after a read, however early it began,
-- is never missed (some rows come twice, which is harmless).
ALTER TABLE vmdesk.vms ADD COLUMN rev xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX vms_rev ON vmdesk.vms (rev);

CREATE FUNCTION vmdesk.vms_rev() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    NEW.rev := pg_current_xact_id();
    RETURN NEW;
END $$;
CREATE TRIGGER vms_rev BEFORE UPDATE ON vmdesk.vms
    FOR EACH ROW EXECUTE FUNCTION vmdesk.vms_rev();

CREATE FUNCTION vmdesk.names_rev() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    IF TG_TABLE_NAME = 'projects' THEN
        UPDATE vmdesk.vms SET rev = pg_current_xact_id() WHERE project_id = NEW.id;
    ELSIF TG_TABLE_NAME = 'hosts' THEN
        UPDATE vmdesk.vms SET rev = pg_current_xact_id() WHERE host_id = NEW.id;
    ELSE
        UPDATE vmdesk.vms SET rev = pg_current_xact_id() WHERE owner_user_id = NEW.id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER projects_rev AFTER UPDATE OF name ON vmdesk.projects
    FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM NEW.name) EXECUTE FUNCTION vmdesk.names_rev();
CREATE TRIGGER hosts_rev AFTER UPDATE OF name ON vmdesk.hosts
    FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM NEW.name) EXECUTE FUNCTION vmdesk.names_rev();
CREATE TRIGGER users_rev AFTER UPDATE OF name ON vmdesk.users
    FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM NEW.name) EXECUTE FUNCTION vmdesk.names_rev();

-- A system event about an own VM that its owner sees (the subject): the
-- warning before an idle shutdown they chose, and the shutdown. Through an
-- admin's process (serve, or the desk of an admin).
CREATE FUNCTION vmdesk.owner_note(p_action text, p_severity text, p_vm bigint, p_details jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE v vmdesk.vms;
BEGIN
    PERFORM vmdesk.require_admin('write events about VMs');
    IF p_action NOT IN ('vm.idle_warning', 'vm.idle_stop') THEN
        RAISE EXCEPTION 'no owner note %', p_action USING ERRCODE = '22023';
    END IF;
    IF p_severity NOT IN ('info', 'warning', 'critical') THEN
        RAISE EXCEPTION 'no severity %', p_severity USING ERRCODE = '22023';
    END IF;
    SELECT * INTO v FROM vmdesk.vms WHERE id = p_vm;
    IF NOT FOUND OR v.owner_user_id IS NULL THEN
        RAISE EXCEPTION 'VM % is not an own VM', p_vm USING ERRCODE = '22023';
    END IF;
    PERFORM vmdesk.record('vm', p_action, p_severity, 'vmdesk', v.id, NULL, v.owner_user_id, p_details);
END $$;

REVOKE EXECUTE ON FUNCTION vmdesk.owner_note(text, text, bigint, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vmdesk.owner_note(text, text, bigint, jsonb) TO @USERS@;
REVOKE EXECUTE ON FUNCTION vmdesk.vms_rev(), vmdesk.names_rev() FROM PUBLIC;
