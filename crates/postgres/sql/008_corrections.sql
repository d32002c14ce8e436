-- Admin corrections (issue 16): an adjustment moves a user's balance either
-- way, never below zero; a refund gives back a failed creation's charge,
-- once, linked to its VM.

-- A VM's creation charge is refunded once: a second refund entry for the
-- same VM is refused by the database, whoever races for it.
CREATE UNIQUE INDEX ledger_refund_once ON vmdesk.ledger (vm_id) WHERE kind = 'refund';

CREATE FUNCTION vmdesk.credits_adjust(p_name text, p_amount bigint, p_reason text) RETURNS vmdesk.ledger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; u vmdesk.users; have bigint; e vmdesk.ledger;
BEGIN
    a := vmdesk.require_admin('adjust credits');
    IF p_amount IS NULL OR p_amount = 0 OR p_amount NOT BETWEEN -1000000000 AND 1000000000 THEN
        RAISE EXCEPTION 'an adjustment must be between -1000000000 and 1000000000 credits, and not 0, not %',
            coalesce(p_amount::text, 'nothing') USING ERRCODE = '22023';
    END IF;
    PERFORM vmdesk.check_reason(p_reason);
    u := vmdesk.user_named(p_name);
    -- The locked row: the check and the entry are one step.
    SELECT balance INTO have FROM vmdesk.users WHERE id = u.id FOR UPDATE;
    IF have + p_amount < 0 THEN
        RAISE EXCEPTION 'an adjustment of % would take the balance of "%" below zero: it is %',
            p_amount, u.name, have USING ERRCODE = 'VDB02',
            DETAIL = json_build_object('user', u.name, 'amount', p_amount, 'balance', have)::text;
    END IF;
    INSERT INTO vmdesk.ledger (user_id, amount, kind, reason, actor)
        VALUES (u.id, p_amount, 'adjustment', p_reason, a.name) RETURNING * INTO e;
    PERFORM vmdesk.record('admin', 'credits.adjust', 'info', a.name, NULL, NULL, u.id,
        jsonb_build_object('user', u.name, 'amount', p_amount, 'reason', p_reason,
                           'balance', have + p_amount));
    RETURN e;
END $$;

CREATE FUNCTION vmdesk.refusal_to_refund(p_vm text, p_why text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
BEGIN
    RAISE EXCEPTION 'the creation charge of VM "%" cannot be refunded: %', p_vm, p_why
        USING ERRCODE = 'VDB03', DETAIL = json_build_object('vm', p_vm, 'why', p_why)::text;
END $$;

CREATE FUNCTION vmdesk.credits_refund(p_vm bigint, p_reason text) RETURNS vmdesk.ledger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE a vmdesk.users; v vmdesk.vms; c vmdesk.ledger; done bigint; uname text; e vmdesk.ledger;
BEGIN
    a := vmdesk.require_admin('refund credits');
    PERFORM vmdesk.check_reason(p_reason);
    -- The VM's row locked: two refunds of one VM are one after the other.
    SELECT * INTO v FROM vmdesk.vms WHERE id = p_vm FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no VM named %', p_vm USING ERRCODE = 'VDN01',
            DETAIL = json_build_object('vm', p_vm::text)::text;
    END IF;
    IF v.status <> 'FAILED_TO_START' THEN
        PERFORM vmdesk.refusal_to_refund(v.name,
            format('it is %s; only a creation that failed is refunded', v.status));
    END IF;
    SELECT * INTO c FROM vmdesk.ledger WHERE vm_id = v.id AND kind = 'vm_create' ORDER BY id LIMIT 1;
    IF NOT FOUND THEN
        PERFORM vmdesk.refusal_to_refund(v.name, 'nothing was charged for its creation');
    END IF;
    SELECT id INTO done FROM vmdesk.ledger WHERE vm_id = v.id AND kind = 'refund';
    IF FOUND THEN
        PERFORM vmdesk.refusal_to_refund(v.name, format('it was refunded already (ledger entry %s)', done));
    END IF;
    INSERT INTO vmdesk.ledger (user_id, amount, kind, reason, vm_id, actor)
        VALUES (c.user_id, -c.amount, 'refund', p_reason, v.id, a.name) RETURNING * INTO e;
    -- The VM says so too, for lists that show what is left to refund.
    UPDATE vmdesk.vms SET metadata = metadata || jsonb_build_object('refunded', e.id) WHERE id = v.id;
    SELECT name INTO uname FROM vmdesk.users WHERE id = c.user_id;
    PERFORM vmdesk.record('billing', 'credits.refund', 'info', a.name, v.id, NULL, c.user_id,
        jsonb_build_object('user', uname, 'vm', v.name, 'amount', -c.amount, 'reason', p_reason,
                           'charge', c.id));
    RETURN e;
END $$;

REVOKE EXECUTE ON FUNCTION vmdesk.refusal_to_refund(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vmdesk.credits_adjust(text, bigint, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vmdesk.credits_refund(bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vmdesk.credits_adjust(text, bigint, text) TO @USERS@;
GRANT EXECUTE ON FUNCTION vmdesk.credits_refund(bigint, text) TO @USERS@;
