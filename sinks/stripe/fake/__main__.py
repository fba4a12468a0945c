from sinks.stripe.fake.server import main

main()
