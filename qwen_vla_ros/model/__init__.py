"""The Qwen-VLA policy. Importing this package must stay cheap: torch loads inside load_policy."""
