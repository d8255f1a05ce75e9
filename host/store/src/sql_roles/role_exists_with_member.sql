-- Whether role $1 exists, and whether it exists with the current user as a member.
SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1),
       EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1) AND pg_has_role(current_user, $1, 'MEMBER')
