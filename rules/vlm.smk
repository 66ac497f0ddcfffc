# rules for the vlm stage (owner fills in)
