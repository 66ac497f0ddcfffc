# rules for the finetune stage (owner fills in)
