-- vmdesk team store, step 6: placement by capacity. A desk checks that a
-- host has room before a creation is charged; the memory other users' VMs
-- hold there counts, but no user may list other users' VMs. So the sums per
-- host are given to every user, and nothing behind them.
CREATE FUNCTION vmdesk.host_memory() RETURNS TABLE (host text, ram_mb bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    PERFORM vmdesk.caller();
    RETURN QUERY
        SELECT h.name, SUM(v.ram_mb)::bigint
          FROM vmdesk.vms v JOIN vmdesk.hosts h ON h.id = v.host_id
         WHERE v.status IN ('CREATING', 'STARTING', 'RUNNING', 'STOPPING')
         GROUP BY h.name ORDER BY h.name;
END $$;

REVOKE EXECUTE ON FUNCTION vmdesk.host_memory() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vmdesk.host_memory() TO @USERS@;
