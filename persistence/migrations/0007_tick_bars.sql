-- 1 s bars of every symbol's ticks (persistence/tick_bars.py), cluster mode only: the last
-- resort of a replay when the Redis stream no longer holds the quotes of a gap (trimmed, or
-- lost with Redis's memory). A bar has no order inside its second: see tick_bars.bar_path for
-- how one is replayed.
--
-- ``second`` is the unix second of the quotes' stream ids (Redis's clock, the clock the
-- streams are trimmed by). first_seq/last_seq bound the per-symbol stream sequence numbers the
-- bar covers. Several nodes append quotes of one symbol in the same second: their rows merge
-- (LEAST/GREATEST), which is why every column is a bound, not a single quote's value.
CREATE TABLE tick_bars (
    symbol    text             NOT NULL,
    second    bigint           NOT NULL,
    first_seq bigint           NOT NULL,
    last_seq  bigint           NOT NULL,
    bid_min   double precision NOT NULL,
    bid_max   double precision NOT NULL,
    ask_min   double precision NOT NULL,
    ask_max   double precision NOT NULL,
    PRIMARY KEY (symbol, second),
    CHECK (first_seq <= last_seq),
    CHECK (bid_min <= bid_max),
    CHECK (ask_min <= ask_max)
);

-- A replay asks for the bars of a sequence range of one symbol.
CREATE INDEX tick_bars_by_seq ON tick_bars (symbol, last_seq);
