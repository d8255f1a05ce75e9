-- Whether role $1 may execute projector_settle, and whether the current user is its member.
SELECT has_function_privilege($1, 'projector_settle(uuid, bigint[], text[], text[], text[], float8[], int, text)', 'EXECUTE'),
       pg_has_role(current_user, $1, 'MEMBER')
