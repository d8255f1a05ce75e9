-- How long the switch's transaction waits for the live tables' locks before giving up (and
-- trying again later): readers queue behind the lock meanwhile.
SET LOCAL lock_timeout = '10s'
