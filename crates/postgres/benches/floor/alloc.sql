-- One allocation at the floor: one statement, as vmdesk.session_open's.
WITH pick AS (SELECT id FROM vm WHERE project_id = 1 AND live IS NULL AND status IN ('STOPPED','RUNNING') ORDER BY last_stopped NULLS FIRST, id LIMIT 1 FOR UPDATE SKIP LOCKED),
o AS (INSERT INTO ses (vm_id, user_id, status) SELECT id, 7, 'REQUESTED' FROM pick RETURNING id, vm_id),
h AS (UPDATE vm SET live = o.id FROM o WHERE vm.id = o.vm_id),
e AS (INSERT INTO ev (action, vm_id, session_id, details) SELECT 'session.open', vm_id, id, '{"project":"lab"}' FROM o)
SELECT id FROM o;
