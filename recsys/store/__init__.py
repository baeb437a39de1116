"""The online store and the event stream: a real Valkey (or Redis) server, its key layout, and what serving and
the event consumer read and write there."""
