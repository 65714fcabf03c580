"""The learning core, no I/O: settings, arm statistics, features, reward, policies, the reward join and the
in-process selector. Imports only the contract."""
