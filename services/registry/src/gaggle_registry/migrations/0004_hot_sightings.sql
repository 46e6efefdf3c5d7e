-- Sightings update last_seen_at of thousands of devices a second. An index on it makes every
-- such update touch all of the table's indexes; without one, and with room left on each page,
-- PostgreSQL updates the row in place (HOT). Measured at 100,000 devices: 18,700 -> 126,000
-- sightings/s, while a listing sorted by last seen (a top-N sort without the index) stays at
-- about 27 ms. The fill factor applies to pages written from now on.
DROP INDEX devices_by_last_seen;
ALTER TABLE devices SET (fillfactor = 70);
