"""Who is asking and what they may do: principals, API keys, OIDC tokens and visas."""
