# rules for the segment stage (owner fills in)
