from chargen.cli.app import main

main()
