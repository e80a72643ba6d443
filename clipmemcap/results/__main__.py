from clipmemcap.results.report import main

main()
