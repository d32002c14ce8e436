-- vmdesk team store, step 7: VM addresses. Status sync (an admin's `serve`)
-- writes the IPv4 address and SSH port a host gave of a VM (and its public
-- address, Azure's, in its metadata as public_ip); a change is a
-- `vm.address` event that the VM's owner (or the session's user) sees.
CREATE FUNCTION vmdesk.vm_address(p_id bigint, p_ip text, p_port integer, p_learned text, p_source text,
    p_public text, OUT vm text, OUT was text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE v vmdesk.vms;
BEGIN
    PERFORM vmdesk.require_admin('record VM addresses');
    IF p_ip IS NOT NULL AND p_ip !~ '^[0-9]{1,3}(\.[0-9]{1,3}){3}$' THEN
        RAISE EXCEPTION '% is not an IPv4 address', p_ip USING ERRCODE = '22023';
    END IF;
    IF p_public IS NOT NULL AND p_public !~ '^[0-9]{1,3}(\.[0-9]{1,3}){3}$' THEN
        RAISE EXCEPTION '% is not an IPv4 address', p_public USING ERRCODE = '22023';
    END IF;
    SELECT * INTO v FROM vmdesk.vms WHERE id = p_id FOR UPDATE;
    IF NOT FOUND OR v.status = 'DESTROYED'
       OR (v.ip_address IS NOT DISTINCT FROM p_ip AND v.ssh_port IS NOT DISTINCT FROM p_port
           AND v.metadata->>'public_ip' IS NOT DISTINCT FROM p_public) THEN
        RETURN;
    END IF;
    UPDATE vmdesk.vms SET ip_address = p_ip, ssh_port = p_port, updated_at = now(),
           metadata = CASE WHEN p_public IS NULL THEN metadata - 'public_ip'
                           ELSE metadata || jsonb_build_object('public_ip', p_public) END
     WHERE id = p_id;
    IF v.ip_address IS DISTINCT FROM p_ip OR v.metadata->>'public_ip' IS DISTINCT FROM p_public THEN
        PERFORM vmdesk.record('vm', 'vm.address', 'info', 'vmdesk', p_id, v.live_session_id, v.owner_user_id,
            jsonb_build_object('vm', v.name, 'was', v.ip_address, 'now', p_ip, 'public_ip', p_public,
                'learned', p_learned, 'source', p_source));
        vm := v.name;
        was := v.ip_address;
    END IF;
END $$;

REVOKE EXECUTE ON FUNCTION vmdesk.vm_address(bigint, text, integer, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vmdesk.vm_address(bigint, text, integer, text, text, text) TO @USERS@;

-- Each user's SSH public key, published by their own desk (the private key
-- never leaves it), so that a worker starting their VM (`serve`) writes it
-- into the VM's cloud-init seed. One line of printable characters.
ALTER TABLE vmdesk.users ADD COLUMN ssh_public_key text
    CHECK (ssh_public_key IS NULL
           OR (length(ssh_public_key) <= 16384 AND ssh_public_key !~ '[[:cntrl:]]'
               AND ssh_public_key ~ '^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)[[:punct:]]openssh\.com) [A-Za-z0-9+/=]+( .*)?$'));

CREATE FUNCTION vmdesk.ssh_key_publish(p_key text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE u vmdesk.users;
BEGIN
    u := vmdesk.caller();
    UPDATE vmdesk.users SET ssh_public_key = p_key
     WHERE id = u.id AND ssh_public_key IS DISTINCT FROM p_key;
END $$;

CREATE FUNCTION vmdesk.ssh_key_of(p_user text) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE u vmdesk.users; k text;
BEGIN
    u := vmdesk.caller();
    IF u.name <> p_user AND NOT vmdesk.is_admin() THEN
        RAISE EXCEPTION '% may not read the SSH key of %', session_user, p_user USING ERRCODE = '42501';
    END IF;
    SELECT ssh_public_key INTO k FROM vmdesk.users WHERE name = p_user;
    RETURN k;
END $$;

REVOKE EXECUTE ON FUNCTION vmdesk.ssh_key_publish(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vmdesk.ssh_key_of(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vmdesk.ssh_key_publish(text) TO @USERS@;
GRANT EXECUTE ON FUNCTION vmdesk.ssh_key_of(text) TO @USERS@;
