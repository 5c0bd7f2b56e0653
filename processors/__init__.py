"""Stream stages (validate, scrub, dedup, forgery) and the stage runtime."""
