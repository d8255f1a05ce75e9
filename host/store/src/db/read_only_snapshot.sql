-- Makes this transaction one consistent read: a REPEATABLE READ, READ ONLY snapshot. Must be the
-- transaction's first statement.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY
