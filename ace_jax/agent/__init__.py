"""The agent's side of the environment: prompt/response codecs and buffer <-> state mapping."""
