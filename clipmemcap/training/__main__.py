from clipmemcap.training.stages import main

main()
