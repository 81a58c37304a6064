-- The history of positions is paged by a cursor on (end time, id), newest first, where the
-- end time is coalesce(closed_at, updated_at) (a rejected position never closed). The index
-- of 0001 on (user_id, closed_at DESC) orders by closed_at alone, so neither the order nor
-- the cursor's row comparison could use it: every page sorted all of a user's history.
--
-- Two partial indexes, over the final states the history lists: a user's history, and
-- everyone's (the admin's view). Each serves "ORDER BY end DESC, id DESC" and
-- "(end, id) < (cursor end, cursor id)" as one backward index scan that stops at the page.
CREATE INDEX positions_history_user_idx
    ON positions (user_id, (coalesce(closed_at, updated_at)), id)
    WHERE state IN ('closed', 'rejected');
CREATE INDEX positions_history_idx
    ON positions ((coalesce(closed_at, updated_at)), id)
    WHERE state IN ('closed', 'rejected');
