# rules for the report stage (owner fills in)
