"""The statistics receiver: locks push unknown keys, keys last seen and their status over mTLS."""
