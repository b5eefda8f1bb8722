"""The data contract: everything that says what a dataset folder holds and how its bytes are read and written.

Reading order: `schema` (typed keyword-only configs from TOML / JSON; `ConfigError`) -> `fs` (local file
touches) -> `locations`, `stores` (local paths and object-store URLs as one `Location`) -> `png`, `codecs`
(the one codec table of sample members) -> `samples` (the one reader of a shard's samples) -> `contract`
(the folder's paths and versioned documents) -> `ownership` (the marker, the lock, what a command may
remove) -> `wds` (decoders for other libraries).
Imports nothing of the other wings.
"""
