# rules for the data stage (owner fills in)
