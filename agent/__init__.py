"""The agent side: identity, tasks, training through a Flower ClientApp, wallet."""
