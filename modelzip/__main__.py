from modelzip.cli import main

main()
