# rules for the perturb stage (owner fills in)
