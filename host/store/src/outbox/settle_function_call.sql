-- settle.sql through the projector_settle function (a projection role's batch records its
-- outcomes inside its own transaction): the same parameters, $1..$8.
SELECT * FROM projector_settle($1, $2, $3, $4, $5, $6, $7, $8)
