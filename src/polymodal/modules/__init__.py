"""Plain, typed nn.Module building blocks (encoders, fusion ops, heads) that models are composed from."""
