"""The agent: the actor-critic over SAE features (`policy`), PPO (`ppo`) and Adaptive Feature Masking (`masking`)."""
