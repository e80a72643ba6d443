from clipmemcap.evaluation.evaluate import main

main()
