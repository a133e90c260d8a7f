from spillover.cli import main

main()
